package realm

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestGenerate(t *testing.T) {
	w := want(t)
	for _, c := range w.Generate {
		opts := GenerateOptions{MaxTokens: c.Case.MaxTokens, Stop: c.Case.Stop}
		if p := c.Case.Sampler; p != nil {
			opts.Sampler = &SamplerParams{Temperature: p.Temperature, TopK: p.TopK, TopP: p.TopP, MinP: p.MinP,
				RepetitionPenalty: p.RepetitionPenalty, Seed: p.Seed}
		}
		s := session(t, 256)
		var pieces []string
		res, err := Generate(context.Background(), s, w.ChatPrompt, opts, func(p string) error {
			pieces = append(pieces, p)
			return nil
		})
		if err != nil {
			t.Fatalf("%+v: %v", c.Case, err)
		}
		if res.Text != c.Text || strings.Join(pieces, "") != c.Text || !reflect.DeepEqual(res.Tokens, c.Tokens) ||
			res.FinishReason.String() != c.Finish || res.NPrompt != c.NPrompt || res.NGenerated != len(c.Tokens) {
			t.Errorf("%+v:\n got %q %v %s n_prompt %d n_generated %d\nwant %q %v %s n_prompt %d",
				c.Case, res.Text, res.Tokens, res.FinishReason, res.NPrompt, res.NGenerated,
				c.Text, c.Tokens, c.Finish, c.NPrompt)
		}
		if n := must(s.NTokens()); n != c.NTokensAfter {
			t.Errorf("%+v: NTokens after = %d, Python %d", c.Case, n, c.NTokensAfter)
		}
	}
	if !strings.Contains(w.Generate[0].Text, "Paris") {
		t.Errorf("the greedy answer %q does not name Paris", w.Generate[0].Text)
	}
}

func TestGenerateTokens(t *testing.T) {
	w := want(t)
	ids := must(testModel.Tokenize(w.ChatPrompt, TokenizeDefault))
	res, err := GenerateTokens(context.Background(), session(t, 256), ids, GenerateOptions{MaxTokens: 5}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if g := w.Generate[2]; res.Text != g.Text || !reflect.DeepEqual(res.Tokens, g.Tokens) || res.FinishReason != FinishLength {
		t.Errorf("GenerateTokens = %q %v %s, Python %q %v", res.Text, res.Tokens, res.FinishReason, g.Text, g.Tokens)
	}
}

func TestGenerateCancel(t *testing.T) {
	w := want(t)
	greedy := w.Generate[0].Tokens

	// The context is cancelled from inside the callback after 3 pieces: the 4th is not delivered.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := session(t, 256)
	n := 0
	res, err := Generate(ctx, s, w.ChatPrompt, GenerateOptions{MaxTokens: 32}, func(string) error {
		if n++; n == 3 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || res.FinishReason != FinishCancelled || n != 3 ||
		!reflect.DeepEqual(res.Tokens, greedy[:3]) {
		t.Errorf("cancel: err %v, %s after %d pieces, tokens %v (want %v)", err, res.FinishReason, n, res.Tokens, greedy[:3])
	}

	// The callback's error stops generation and comes back unchanged.
	stop := errors.New("enough")
	s2 := session(t, 256)
	res, err = Generate(context.Background(), s2, w.ChatPrompt, GenerateOptions{MaxTokens: 32}, func(p string) error {
		return stop
	})
	if err != stop || res.FinishReason != FinishCancelled || len(res.Tokens) != 1 {
		t.Errorf("callback error: %v, %s, %d tokens", err, res.FinishReason, len(res.Tokens))
	}

	// A context already done: nothing runs.
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel2()
	<-ctx2.Done()
	s3 := session(t, 256)
	if _, err = Generate(ctx2, s3, w.ChatPrompt, GenerateOptions{}, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("expired context: %v", err)
	}
	if n := must(s3.NTokens()); n != 0 {
		t.Errorf("expired context decoded %d tokens", n)
	}

	// A deadline that passes during generation.
	ctx4, cancel4 := context.WithTimeout(context.Background(), time.Hour)
	defer cancel4()
	got := 0
	res, err = Generate(ctx4, session(t, 256), w.ChatPrompt, GenerateOptions{MaxTokens: 32}, func(string) error {
		if got++; got == 2 {
			cancel4()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || got != 2 {
		t.Errorf("cancel during generation: %v after %d pieces", err, got)
	}
}

func TestGeneratePanicDoesNotCrossC(t *testing.T) {
	w := want(t)
	s := session(t, 256)
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want the callback's panic value", r)
			}
		}()
		_, _ = Generate(context.Background(), s, w.ChatPrompt, GenerateOptions{MaxTokens: 8}, func(string) error {
			panic("boom")
		})
		t.Error("Generate returned instead of re-raising the callback's panic")
	}()
	// The library is still usable: nothing was unwound through its C and Python frames.  The
	// session holds the prompt (the first token was sampled, then generation stopped).
	if n := must(s.NTokens()); n != w.Generate[0].NPrompt {
		t.Errorf("NTokens after the panic = %d, want the prompt's %d", n, w.Generate[0].NPrompt)
	}
	if _, err := Generate(context.Background(), s, "<|im_start|>user\nAnd Italy?<|im_end|>\n", GenerateOptions{MaxTokens: 2}, nil); err != nil {
		t.Fatal(err)
	}
}

// The token callback runs while the library is inside Python, but other goroutines' calls go
// on meanwhile: a slow callback does not hold the runtime's lock.
func TestGenerateCallbackDoesNotBlockOthers(t *testing.T) {
	w := want(t)
	s := session(t, 256)
	inCallback := make(chan struct{})
	var worst time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-inCallback
		for i := 0; i < 5; i++ {
			t0 := time.Now()
			if _, err := testModel.Tokenize("Hello", 0); err != nil {
				t.Error(err)
			}
			if d := time.Since(t0); d > worst {
				worst = d
			}
		}
	}()
	first := true
	_, err := Generate(context.Background(), s, w.ChatPrompt, GenerateOptions{MaxTokens: 1}, func(string) error {
		if first {
			first = false
			close(inCallback)
			select { // the other goroutine's calls complete while this callback waits
			case <-done:
			case <-time.After(20 * time.Second):
				t.Error("calls from another goroutine did not complete while the callback waited")
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("slowest call during the callback: %v", worst)
	if worst > 2*time.Second {
		t.Errorf("a call during the callback took %v", worst)
	}
}
