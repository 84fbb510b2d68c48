package realm

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

var sentinels = map[Code]error{
	CodeInternal: ErrInternal, CodeInit: ErrInit, CodeArg: ErrArg, CodeNotFound: ErrNotFound,
	CodeRange: ErrRange, CodeBufferTooSmall: ErrBufferTooSmall, CodeFormat: ErrFormat,
	CodeUnsupported: ErrUnsupported, CodeLimit: ErrLimit, CodeBusy: ErrBusy, CodeConflict: ErrConflict, CodeIO: ErrIO,
}

// checkErr fails unless err is an *Error with exactly this code (and errors.Is its sentinel, and
// no other) whose message contains msg.
func checkErr(t testing.TB, err error, code Code, msg string) {
	t.Helper()
	var re *Error
	if !errors.As(err, &re) {
		t.Errorf("got %v, want a *realm.Error %s %q", err, code, msg)
		return
	}
	if re.Code != code || !strings.Contains(re.Message, msg) {
		t.Errorf("got %s %q, want %s containing %q", re.Code, re.Message, code, msg)
	}
	for c, s := range sentinels {
		if errors.Is(err, s) != (c == code) {
			t.Errorf("errors.Is(%v, Err for %s) = %v", err, c, c != code)
		}
	}
	if !strings.Contains(err.Error(), re.Message) || !strings.Contains(err.Error(), code.String()) {
		t.Errorf("Error() = %q lacks the message or the code name", err.Error())
	}
}

func TestMisuse(t *testing.T) {
	s := session(t, 64)
	sm := must(NewSampler(DefaultSamplerParams()))
	defer sm.Close()
	nan := make([]float32, testModel.dims.NEmbd)
	nan[3] = float32(math.NaN())
	model := fmt.Sprintf("%#x", testModel.ID())
	bad := filepath.Join(t.TempDir(), "bad.gguf")
	if err := os.WriteFile(bad, []byte("GGUF\x07\x00\x00\x00"+strings.Repeat("\x00", 24)), 0o644); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("hello world ", 100)
	ctx := context.Background()

	cases := []struct {
		name string
		call func() error
		code Code
		msg  string
	}{
		// models
		{"StoreModel(nil)", func() error { _, err := StoreModel(nil, 0); return err }, CodeArg, "realm_model_store: data is NULL"},
		{"StoreModel(not GGUF)", func() error { _, err := StoreModel([]byte("hello"), 0); return err }, CodeFormat,
			"realm_model_store: GGUF header: bad magic b'hell', expected b'GGUF'"},
		{"StoreModelFile(missing)", func() error { _, err := StoreModelFile("/nonexistent.gguf", 0); return err }, CodeIO,
			"realm_model_store_file: path '/nonexistent.gguf' does not exist"},
		{"StoreModelFile(bad version)", func() error { _, err := StoreModelFile(bad, 0); return err }, CodeFormat,
			"realm_model_store_file: GGUF header: unknown version 7 (expected 2 or 3)"},
		{"StoreDefaultModel(taken id)", func() error { _, err := StoreDefaultModel(testModel.ID() + 1); return err }, CodeConflict,
			"realm_model_store_default: this content is already stored as model " + model},
		{"Model.Close with a live session", testModel.Close, CodeBusy,
			"realm_model_remove: model " + model + " has 1 live session(s); free them first"},
		{"Tensor(unknown)", func() error { _, _, err := testModel.Tensor("nope"); return err }, CodeNotFound,
			"realm_tensor_info_get: tensor 'nope' not found in model " + model},
		{"NewSession(n_ctx > train)", func() error { _, err := testModel.NewSession(100000); return err }, CodeRange,
			"realm_session_create: n_ctx 100000 exceeds the model's context length 8192"},
		{"NewSession(-1)", func() error { _, err := testModel.NewSession(-1); return err }, CodeArg,
			"Model.NewSession: nCtx -1 is outside [0, 4294967295]"},
		// text
		{"Tokenize(invalid UTF-8)", func() error { _, err := testModel.Tokenize("\xff\xfe", 0); return err }, CodeArg,
			"realm_tokenize: text is not valid UTF-8 (byte 0: 0xff)"},
		{"Tokenize(unknown flags)", func() error { _, err := testModel.Tokenize("hi", 8); return err }, CodeArg,
			"realm_tokenize: flags 0x8 has unknown bits 0x8"},
		{"Detokenize(bad id)", func() error { _, err := testModel.Detokenize([]int32{99999}); return err }, CodeRange,
			"realm_detokenize: token id 99999 outside the vocabulary [0, 49152)"},
		{"TokenPiece(-5)", func() error { _, err := testModel.TokenPiece(-5); return err }, CodeRange,
			"realm_token_piece: token id -5 outside the vocabulary [0, 49152)"},
		{"ApplyChatTemplateJSON(bad JSON)", func() error { _, err := testModel.ApplyChatTemplateJSON("[{", true); return err },
			CodeArg, "realm_chat_template_json: messages_json is not valid JSON"},
		{"ApplyChatTemplateJSON(object)", func() error { _, err := testModel.ApplyChatTemplateJSON("{}", true); return err },
			CodeArg, "realm_chat_template_json: messages_json must be a JSON array of messages, got a dict"},
		// compute
		{"ForwardLayer(layer L)", func() error { _, err := s.ForwardLayer(30, 0, make([]float32, 576)); return err }, CodeRange,
			"realm_forward_layer: layer 30 out of range [0, 30)"},
		{"ForwardLayer(pos past the cache)", func() error { _, err := s.ForwardLayer(0, 5, make([]float32, 576)); return err }, CodeRange,
			"realm_forward_layer: pos 5 skips past the 0 positions cached for layer 0"},
		{"ForwardLayer(NaN)", func() error { _, err := s.ForwardLayer(0, 0, nan); return err }, CodeArg,
			"realm_forward_layer: hidden contains NaN or infinity"},
		{"ForwardLayer(empty)", func() error { _, err := s.ForwardLayer(0, 0, nil); return err }, CodeArg,
			"realm_forward_layer: n_tokens is 0: at least one token is needed"},
		{"ForwardLayer(ragged)", func() error { _, err := s.ForwardLayer(0, 0, make([]float32, 100)); return err }, CodeArg,
			"Session.ForwardLayer: len(hidden) 100 is not a multiple of n_embd 576"},
		{"ForwardLayer(-1)", func() error { _, err := s.ForwardLayer(-1, 0, make([]float32, 576)); return err }, CodeRange,
			"Session.ForwardLayer: layer -1 or pos 0 is negative or too large"},
		{"ComputeLogits(empty)", func() error { _, err := s.ComputeLogits(nil); return err }, CodeArg,
			"realm_compute_logits: n_tokens is 0: at least one token is needed"},
		{"ComputeLogits(NaN)", func() error { _, err := s.ComputeLogits(nan); return err }, CodeArg,
			"realm_compute_logits: hidden contains NaN or infinity"},
		{"EmbedTokens(bad id)", func() error { _, err := s.EmbedTokens([]int32{49152}); return err }, CodeRange,
			"realm_embed_tokens: token id 49152 out of range [0, 49152)"},
		{"EmbedTokens(empty)", func() error { _, err := s.EmbedTokens(nil); return err }, CodeArg,
			"realm_embed_tokens: n_tokens is 0: at least one token is needed"},
		{"Decode(empty)", func() error { _, err := s.Decode(nil); return err }, CodeArg,
			"realm_decode: n_tokens is 0: at least one token is needed"},
		{"DecodeAll(empty)", func() error { _, err := s.DecodeAll([]int32{}); return err }, CodeArg,
			"realm_decode: n_tokens is 0: at least one token is needed"},
		{"Decode(-1)", func() error { _, err := s.Decode([]int32{-1}); return err }, CodeRange,
			"realm_decode: token id -1 out of range [0, 49152)"},
		{"Decode(past n_ctx)", func() error { _, err := s.Decode(make([]int32, 65)); return err }, CodeRange,
			"realm_decode: positions [0, 65) exceed the session's n_ctx 64"},
		{"Truncate(past the cache)", func() error { return s.Truncate(5) }, CodeRange,
			"realm_session_truncate: n 5 out of range [0, 0]"},
		{"Truncate(-1)", func() error { return s.Truncate(-1) }, CodeRange, "Session.Truncate: n -1 is outside [0, 4294967295]"},
		// sampling
		{"NewSampler(zero value)", func() error { _, err := NewSampler(SamplerParams{}); return err }, CodeArg,
			"realm_sampler_create: params->top_p=0.0 must be in (0, 1]"},
		{"NewSampler(temperature -1)", func() error {
			p := DefaultSamplerParams()
			p.Temperature = -1
			_, err := NewSampler(p)
			return err
		}, CodeArg, "realm_sampler_create: params->temperature=-1.0 must be finite and >= 0"},
		{"Sample(empty)", func() error { _, err := sm.Sample(nil, nil); return err }, CodeArg,
			"realm_sampler_sample: n_logits is 0: logits [V] must hold at least one value"},
		{"Sample(NaN)", func() error { _, err := sm.Sample([]float32{1, float32(math.NaN())}, nil); return err }, CodeArg,
			"realm_sampler_sample: logits contain NaN (first at id 1)"},
		{"TopK(k 0)", func() error { _, _, err := TopK([]float32{1, 2}, 0); return err }, CodeArg, "realm_top_k: k is 0: ask for at least one entry"},
		{"TopK(empty)", func() error { _, _, err := TopK(nil, 3); return err }, CodeArg,
			"realm_top_k: n_logits is 0: logits [V] must hold at least one value"},
		{"TopK(k -1)", func() error { _, _, err := TopK([]float32{1}, -1); return err }, CodeArg, "TopK: k -1 is negative"},
		// generation
		{"Generate(empty prompt)", func() error { _, err := Generate(ctx, s, "", GenerateOptions{}, nil); return err }, CodeArg,
			"realm_generate: prompt is empty: it tokenized to no tokens"},
		{"Generate(prompt too long)", func() error { _, err := Generate(ctx, s, long, GenerateOptions{}, nil); return err }, CodeLimit,
			"realm_generate: prompt of 201 tokens does not fit: the session holds 0 of n_ctx 64"},
		{"Generate(empty stop)", func() error {
			_, err := Generate(ctx, s, "hi", GenerateOptions{Stop: []string{""}}, nil)
			return err
		}, CodeArg, "realm_generate: stop must be a list of non-empty strings, got ['']"},
		{"Generate(bad sampler)", func() error {
			_, err := Generate(ctx, s, "hi", GenerateOptions{Sampler: &SamplerParams{TopP: 1, RepetitionPenalty: 0}}, nil)
			return err
		}, CodeArg, "realm_generate: params->sampler->repetition_penalty=0.0 must be finite and > 0"},
		{"Generate(MaxTokens -1)", func() error { _, err := Generate(ctx, s, "hi", GenerateOptions{MaxTokens: -1}, nil); return err },
			CodeArg, "Generate: MaxTokens -1 is outside [0, 2147483647]"},
		{"GenerateTokens(bad id)", func() error { _, err := GenerateTokens(ctx, s, []int32{-7}, GenerateOptions{}, nil); return err },
			CodeRange, "realm_generate_tokens: token id -7 out of range [0, 49152)"},
		// nil receivers
		{"nil Model", func() error { _, err := (*Model)(nil).Info(); return err }, CodeArg, "Model.Info: the model is nil"},
		{"nil Session", func() error { _, err := (*Session)(nil).Decode([]int32{1}); return err }, CodeArg, "Session.Decode: the session is nil"},
		{"nil Sampler", func() error { _, err := (*Sampler)(nil).Sample([]float32{1}, nil); return err }, CodeArg,
			"Sampler.Sample: the sampler is nil"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { checkErr(t, c.call(), c.code, c.msg) })
	}
	// A failed call changed nothing.
	if n := must(s.NTokens()); n != 0 {
		t.Errorf("the failed calls left %d tokens in the session", n)
	}
}

// Closed objects: every method says so (ErrNotFound, as the library says for a freed id), and
// Close twice is a no-op.
func TestClosed(t *testing.T) {
	m := must(StoreDefaultModel(0)) // a second reference to the same model
	if m.ID() != testModel.ID() {
		t.Fatalf("the same content got id %#x, not %#x", m.ID(), testModel.ID())
	}
	s := must(m.NewSession(16))
	// Closing one reference while testModel holds another frees nothing: the session runs on.
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Decode([]int32{1, 2}); err != nil {
		t.Fatalf("a session of a model with another reference: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Session.Close: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Model.Close: %v", err)
	}
	if _, err := testModel.Tokenize("the other reference lives on", 0); err != nil {
		t.Fatal(err)
	}
	checkErr(t, must1err(s.Decode([]int32{1})), CodeNotFound, "Session.Decode: the session is closed")
	checkErr(t, must1err(s.Fork()), CodeNotFound, "Session.Fork: the session is closed")
	checkErr(t, s.Reset(), CodeNotFound, "Session.Reset: the session is closed")
	checkErr(t, must1err(s.NTokens()), CodeNotFound, "Session.NTokens: the session is closed")
	_, err := Generate(context.Background(), s, "hi", GenerateOptions{}, nil)
	checkErr(t, err, CodeNotFound, "Generate: the session is closed")
	checkErr(t, must1err(m.Info()), CodeNotFound, "Model.Info: the model is closed")
	checkErr(t, must1err(m.NewSession(0)), CodeNotFound, "Model.NewSession: the model is closed")
	checkErr(t, must1err(m.Tokenize("x", 0)), CodeNotFound, "Model.Tokenize: the model is closed")
	_, _, err = m.Tensor("x")
	checkErr(t, err, CodeNotFound, "Model.Tensor: the model is closed")

	smp := must(NewSampler(DefaultSamplerParams()))
	if err := smp.Close(); err != nil {
		t.Fatal(err)
	}
	checkErr(t, must1err(smp.Sample([]float32{1}, nil)), CodeNotFound, "Sampler.Sample: the sampler is closed")
	if err := smp.Close(); err != nil {
		t.Errorf("second Sampler.Close: %v", err)
	}

	// A stale id is refused by the library itself (ids are never reused).
	stale := &Session{model: testModel}
	f := must(testModel.NewSession(8))
	freed := f.ID()
	must0(t, f.Close())
	stale.id.Store(freed)
	checkErr(t, must1err(stale.NTokens()), CodeNotFound, fmt.Sprintf("realm_session_n_tokens: session %d", freed))
}

// Finalizers free what was not closed.
func TestFinalizers(t *testing.T) {
	ids := make([]uint64, 0, 4)
	for i := 0; i < 4; i++ {
		s := must(testModel.NewSession(8))
		ids = append(ids, s.ID())
	}
	probe := &Session{model: testModel}
	deadline := time.Now().Add(10 * time.Second)
	for _, id := range ids {
		probe.id.Store(id)
		for {
			runtime.GC()
			_, err := probe.NTokens()
			if errors.Is(err, ErrNotFound) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("session %d was not freed by its finalizer (%v)", id, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	probe.id.Store(0)
}

func must0(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func must1err[T any](_ T, err error) error { return err }

func TestABIMismatch(t *testing.T) {
	checkErr(t, abiMismatch(2, "/opt/x/librealm.so"), CodeInit,
		"realm.Init: /opt/x/librealm.so has ABI version 2, but this Go binding was written for ABI version 1")
	if err := abiMismatch(BindingABIVersion, "x"); err != nil {
		t.Fatal(err)
	}
}

func TestCodes(t *testing.T) {
	if CodeNotFound.String() != "REALM_E_NOT_FOUND" || CodeNotFound.Text() != "not found" ||
		Code(-99).String() != "REALM_E_UNKNOWN(-99)" || Code(-99).Text() != "unknown error code" {
		t.Errorf("code names: %s %q %s %q", CodeNotFound, CodeNotFound.Text(), Code(-99), Code(-99).Text())
	}
	if ErrBusy.Error() != "realm: busy (REALM_E_BUSY)" {
		t.Errorf("sentinel text %q", ErrBusy.Error())
	}
	wrapped := fmt.Errorf("loading: %w", &Error{Code: CodeIO, Message: "x"})
	if !errors.Is(wrapped, ErrIO) || errors.Is(wrapped, ErrFormat) {
		t.Error("errors.Is through a wrap")
	}
}
