package realm

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"sync"
	"testing"
)

// outcome is what one worker observes; equal outcomes mean equal results, bit for bit.
type outcome struct {
	ids      string
	embed    [32]byte
	logits   [32]byte
	forked   [32]byte
	next     int32
	text     string
	nTokens  int
	errText  string // the message of this worker's own failing call
	errCode  Code
	infoName string
}

var texts = []string{"The capital of France is", "Go is a programming language", "1, 2, 3,", "Hello",
	"naïve café", "<|im_start|>user\nHi<|im_end|>", "Rome was not built", "The quick brown fox"}

func digest(x []float32) [32]byte {
	raw := make([]byte, 4*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	return sha256.Sum256(raw)
}

// work is a worker's mixed sequence of calls: model, text, session, compute, fork, truncate and
// one failing call whose message names the worker's own number.  runtime.Gosched between calls
// lets goroutines move between OS threads.
func work(i int) (o outcome, err error) {
	text := texts[i%len(texts)]
	ids, err := testModel.Tokenize(text, TokenizeDefault)
	if err != nil {
		return o, err
	}
	o.ids = fmt.Sprint(ids)
	runtime.Gosched()
	s, err := testModel.NewSession(32)
	if err != nil {
		return o, err
	}
	defer s.Close()
	emb, err := s.EmbedTokens(ids)
	if err != nil {
		return o, err
	}
	o.embed = digest(emb)
	runtime.Gosched()
	_, ferr := s.ForwardLayer(30+i, 0, emb) // fails with this worker's layer number
	if e, ok := ferr.(*Error); ok {
		o.errCode, o.errText = e.Code, e.Message
	}
	runtime.Gosched()
	logits, err := s.Decode(ids)
	if err != nil {
		return o, err
	}
	o.logits, o.next = digest(logits), argmax(logits)
	f, err := s.Fork()
	if err != nil {
		return o, err
	}
	defer f.Close()
	runtime.Gosched()
	fl, err := f.Decode([]int32{o.next})
	if err != nil {
		return o, err
	}
	o.forked = digest(fl)
	if err := s.Truncate(1); err != nil {
		return o, err
	}
	if o.nTokens, err = s.NTokens(); err != nil {
		return o, err
	}
	if o.text, err = testModel.Detokenize(append(ids, o.next)); err != nil {
		return o, err
	}
	info, err := testModel.Info()
	o.infoName = info.Name
	return o, err
}

// 64 goroutines of mixed calls give what one goroutine gives, and each gets its own messages.
func TestConcurrentGoroutines(t *testing.T) {
	const workers = 64
	base := make([]outcome, len(texts))
	for k := range base {
		o, err := work(k)
		if err != nil {
			t.Fatal(err)
		}
		base[k] = o
	}
	got := make([]outcome, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			got[i], errs[i] = work(i)
		}(i)
	}
	wg.Wait()
	for i := 0; i < workers; i++ {
		if errs[i] != nil {
			t.Fatalf("worker %d: %v", i, errs[i])
		}
		w := base[i%len(texts)]
		wantMsg := fmt.Sprintf("realm_forward_layer: layer %d out of range [0, 30)", 30+i)
		if got[i].errCode != CodeRange || got[i].errText != wantMsg {
			t.Errorf("worker %d got the message %s %q, want its own %q", i, got[i].errCode, got[i].errText, wantMsg)
		}
		g := got[i]
		g.errText, w.errText = "", ""
		if g != w {
			t.Errorf("worker %d (%q) differs from the single-goroutine run:\n got %+v\nwant %+v", i, texts[i%len(texts)], g, w)
		}
	}
}
