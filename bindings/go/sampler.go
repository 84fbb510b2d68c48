package realm

// #include "realm.h"
import "C"

import (
	"runtime"
	"sync/atomic"
	"unsafe"
)

// SeedRandom as SamplerParams.Seed asks for a fresh random seed per sampler.
const SeedRandom uint64 = C.REALM_SEED_RANDOM

// SamplerParams are the sampling options, applied in this order: repetition penalty ->
// temperature -> top-k -> top-p -> min-p -> draw.  Start from DefaultSamplerParams (greedy):
// the zero value is not valid (TopP and RepetitionPenalty must be > 0).
type SamplerParams struct {
	Temperature       float64 // 0 = greedy (argmax, ties to the lower id)
	TopK              int     // 0 = off
	TopP              float64 // 1 = off; in (0, 1]
	MinP              float64 // 0 = off; in [0, 1]
	RepetitionPenalty float64 // 1 = off; > 0
	Seed              uint64  // SeedRandom, or any other value: same seed, same tokens
}

// DefaultSamplerParams returns the library's defaults: greedy, every filter off, a random seed.
func DefaultSamplerParams() SamplerParams {
	var c C.realm_sampler_params
	C.realm_sampler_params_default(&c)
	return SamplerParams{Temperature: float64(c.temperature), TopK: int(c.top_k), TopP: float64(c.top_p),
		MinP: float64(c.min_p), RepetitionPenalty: float64(c.repetition_penalty), Seed: uint64(c.seed)}
}

func (p *SamplerParams) fill(c *C.realm_sampler_params) {
	c.struct_size = C.uint32_t(C.sizeof_realm_sampler_params)
	c.top_k = C.int32_t(clampInt32(p.TopK))
	c.temperature = C.double(p.Temperature)
	c.top_p = C.double(p.TopP)
	c.min_p = C.double(p.MinP)
	c.repetition_penalty = C.double(p.RepetitionPenalty)
	c.seed = C.uint64_t(p.Seed)
}

// clampInt32 keeps out-of-range ints out-of-range (negative stays negative) for the library's check.
func clampInt32(v int) int32 {
	switch {
	case v > 1<<31-1:
		return 1<<31 - 1
	case v < -1<<31:
		return -1 << 31
	}
	return int32(v)
}

// Sampler picks tokens from logits with its own random generator.  Not for concurrent use
// with the same seed expectations: draws from one sampler are sequential.
type Sampler struct {
	id atomic.Uint64
}

// NewSampler creates a sampler; ErrArg names a parameter out of range.
func NewSampler(p SamplerParams) (*Sampler, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	var c C.realm_sampler_params
	p.fill(&c)
	var out C.uint64_t
	e := getErr()
	if err := result(C.realm_sampler_create(&c, &out, e), e); err != nil {
		return nil, err
	}
	s := &Sampler{}
	s.id.Store(uint64(out))
	runtime.SetFinalizer(s, (*Sampler).finalize)
	return s, nil
}

func freeSampler(id uint64) error {
	e := getErr()
	return result(C.realm_sampler_free(C.uint64_t(id), e), e)
}

func (s *Sampler) finalize() { _ = freeSampler(s.id.Swap(0)) }

// Close frees the sampler.  Closing twice is a no-op.
func (s *Sampler) Close() error {
	if s == nil {
		return nil
	}
	id := s.id.Swap(0)
	if id == 0 {
		return nil
	}
	runtime.SetFinalizer(s, nil)
	return freeSampler(id)
}

// Sample picks a token from logits [V], given the tokens seen so far (for the repetition
// penalty; may be nil).
func (s *Sampler) Sample(logits []float32, history []int32) (int32, error) {
	if s == nil {
		return 0, errf(CodeArg, "Sampler.Sample: the sampler is nil")
	}
	id := s.id.Load()
	if id == 0 {
		return 0, errf(CodeNotFound, "Sampler.Sample: the sampler is closed")
	}
	var tok C.int32_t
	e := getErr()
	rc := C.realm_sampler_sample(C.uint64_t(id), floatPtr(logits), C.size_t(len(logits)), int32Ptr(history),
		C.size_t(len(history)), &tok, e)
	runtime.KeepAlive(logits)
	runtime.KeepAlive(history)
	runtime.KeepAlive(s)
	if err := result(rc, e); err != nil {
		return 0, err
	}
	return int32(tok), nil
}

// TopK returns the k largest logits, descending (ties to the lower id), and their token ids.
func TopK(logits []float32, k int) ([]float32, []int32, error) {
	if err := checkABI(); err != nil {
		return nil, nil, err
	}
	if k < 0 {
		return nil, nil, errf(CodeArg, "TopK: k %d is negative", k)
	}
	values, ids := make([]float32, k, k+1), make([]int32, k, k+1)
	var n C.size_t
	e := getErr()
	rc := C.realm_top_k(floatPtr(logits), C.size_t(len(logits)), C.size_t(k), outPtr(values),
		(*C.int32_t)(unsafe.Pointer(&ids[:1][0])), &n, e)
	runtime.KeepAlive(logits)
	if err := result(rc, e); err != nil {
		return nil, nil, err
	}
	return values[:int(n)], ids[:int(n)], nil
}
