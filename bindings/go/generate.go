package realm

/*
#include <stdint.h>
#include <stdlib.h>
#include "realm.h"

void realm_go_params_set_callback(realm_generate_params *params, uintptr_t handle);
*/
import "C"

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"runtime/cgo"
	"strings"
	"unsafe"
)

// FinishReason says why generation ended.
type FinishReason int

const (
	FinishStop      FinishReason = C.REALM_FINISH_STOP      // a stop string matched
	FinishEOS       FinishReason = C.REALM_FINISH_EOS       // the model ended its turn
	FinishLength    FinishReason = C.REALM_FINISH_LENGTH    // MaxTokens generated, or the context is full
	FinishCancelled FinishReason = C.REALM_FINISH_CANCELLED // the context was done or the callback failed
)

func (r FinishReason) String() string {
	switch r {
	case FinishStop:
		return "stop"
	case FinishEOS:
		return "eos"
	case FinishLength:
		return "length"
	case FinishCancelled:
		return "cancelled"
	}
	return fmt.Sprintf("FinishReason(%d)", int(r))
}

// GenerateOptions are the options of Generate.  The zero value is greedy with 256 tokens at most.
type GenerateOptions struct {
	MaxTokens int            // tokens to generate at most; 0 = the default (256)
	Sampler   *SamplerParams // nil = greedy
	Stop      []string       // generation stops before the first match of any of them
}

// Result is the outcome of Generate.
type Result struct {
	Text         string  // the generated text (the pieces concatenated; stop string excluded)
	Tokens       []int32 // the generated token ids
	FinishReason FinishReason
	NPrompt      int // prompt tokens decoded
	NGenerated   int // tokens generated (an EOS that ended the turn is not counted)
}

// Generate generates from a text prompt (tokenized with TokenizeDefault, so a rendered chat
// template keeps its control tokens), calling fn with each piece of text as it completes
// (fn may be nil).  The session keeps the prompt and every generated token.
//
// Generation stops early when ctx is done (the error is ctx.Err()) or when fn returns an error
// (that error); the Result then holds what was generated so far, with FinishCancelled.  The
// context is checked before each token is delivered, not while the prompt is being decoded.
// fn runs on the calling goroutine; it must not use s.  A panic in fn stops generation and is
// re-raised from Generate once the library has returned.
func Generate(ctx context.Context, s *Session, prompt string, opts GenerateOptions, fn func(piece string) error) (Result, error) {
	return generate(ctx, s, "Generate", opts, fn, func(id C.uint64_t, p *C.realm_generate_params, r *C.realm_generate_result, e *C.realm_error) C.int32_t {
		return C.realm_generate(id, stringPtr(prompt), C.size_t(len(prompt)), p, r, e)
	})
}

// GenerateTokens is Generate with a prompt of token ids.
func GenerateTokens(ctx context.Context, s *Session, ids []int32, opts GenerateOptions, fn func(piece string) error) (Result, error) {
	return generate(ctx, s, "GenerateTokens", opts, fn, func(id C.uint64_t, p *C.realm_generate_params, r *C.realm_generate_result, e *C.realm_error) C.int32_t {
		return C.realm_generate_tokens(id, int32Ptr(ids), C.size_t(len(ids)), p, r, e)
	})
}

// genState is what the token callback reaches through its cgo.Handle.
type genState struct {
	ctx      context.Context
	fn       func(string) error
	text     strings.Builder
	tokens   []int32
	err      error // why the callback stopped generation
	panicked bool
	panicVal any
}

func generate(ctx context.Context, s *Session, fn string, opts GenerateOptions, cb func(string) error,
	call func(C.uint64_t, *C.realm_generate_params, *C.realm_generate_result, *C.realm_error) C.int32_t) (Result, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	id, err := s.handle(fn)
	if err != nil {
		return Result{}, err
	}
	if opts.MaxTokens < 0 || opts.MaxTokens > math.MaxInt32 {
		return Result{}, errf(CodeArg, "%s: MaxTokens %d is outside [0, %d]", fn, opts.MaxTokens, math.MaxInt32)
	}
	if err := ctx.Err(); err != nil {
		return Result{FinishReason: FinishCancelled}, err
	}

	// The params struct holds pointers, so it and everything it points to live in C memory.
	params := (*C.realm_generate_params)(C.calloc(1, C.sizeof_realm_generate_params))
	defer C.free(unsafe.Pointer(params))
	C.realm_generate_params_default(params)
	if opts.MaxTokens > 0 {
		params.max_tokens = C.uint32_t(opts.MaxTokens)
	}
	if opts.Sampler != nil {
		sp := (*C.realm_sampler_params)(C.calloc(1, C.sizeof_realm_sampler_params))
		defer C.free(unsafe.Pointer(sp))
		opts.Sampler.fill(sp)
		params.sampler = sp
	}
	if n := len(opts.Stop); n > 0 {
		arr := (**C.char)(C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof((*C.char)(nil)))))
		defer C.free(unsafe.Pointer(arr))
		stops := unsafe.Slice(arr, n)
		for i, x := range opts.Stop {
			stops[i] = C.CString(x)
		}
		defer func() {
			for _, p := range stops {
				C.free(unsafe.Pointer(p))
			}
		}()
		params.stop = arr
		params.n_stop = C.size_t(n)
	}
	st := &genState{ctx: ctx, fn: cb}
	h := cgo.NewHandle(st)
	defer h.Delete()
	C.realm_go_params_set_callback(params, C.uintptr_t(h))

	var res C.realm_generate_result
	res.struct_size = C.uint32_t(unsafe.Sizeof(res))
	e := getErr()
	rc := call(id, params, &res, e)
	runtime.KeepAlive(s)
	if st.panicked {
		errPool.Put(e)
		panic(st.panicVal) // re-raised here, on the Go side: nothing unwound through C
	}
	out := Result{Text: st.text.String(), Tokens: st.tokens, FinishReason: FinishReason(res.finish_reason),
		NPrompt: int(res.n_prompt), NGenerated: int(res.n_generated)}
	if err := result(rc, e); err != nil {
		return out, err
	}
	return out, st.err
}

//export realmGoOnToken
func realmGoOnToken(handle C.uintptr_t, token C.int32_t, piece *C.char, n C.size_t) (stop C.int32_t) {
	st := cgo.Handle(handle).Value().(*genState)
	defer func() { // a panic must not unwind through the library's C and Python frames
		if r := recover(); r != nil {
			st.panicked, st.panicVal, stop = true, r, 1
		}
	}()
	if err := st.ctx.Err(); err != nil {
		st.err = err
		return 1
	}
	text := C.GoStringN(piece, C.int(n))
	if token >= 0 {
		st.tokens = append(st.tokens, int32(token))
	}
	st.text.WriteString(text)
	if st.fn != nil {
		if err := st.fn(text); err != nil {
			st.err = err
			return 1
		}
	}
	return 0
}
