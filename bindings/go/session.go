package realm

// #include <stdlib.h>
// #include "realm.h"
import "C"

import (
	"math"
	"runtime"
	"sync/atomic"
	"unsafe"
)

// Session is one sequence on one model with its own KV cache.  Shapes: T tokens, D = NEmbd,
// V = NVocab; matrices are row-major []float32 ([T, D] is T rows of D floats).  A failed call
// leaves the cache exactly as it was.  Calls on one session serialize in the library; calls on
// different sessions may overlap.
type Session struct {
	id    atomic.Uint64 // 0 once closed
	model *Model        // keeps the model alive (and stored) while the session lives
}

// NewSession creates a session on the model with a KV cache of nCtx positions (0 = the default,
// min(2048, NCtxTrain)); ErrRange when nCtx > NCtxTrain.
func (m *Model) NewSession(nCtx int) (*Session, error) {
	id, err := m.handle("Model.NewSession")
	if err != nil {
		return nil, err
	}
	if nCtx < 0 || nCtx > math.MaxUint32 {
		return nil, errf(CodeArg, "Model.NewSession: nCtx %d is outside [0, %d]", nCtx, uint32(math.MaxUint32))
	}
	var out C.uint64_t
	e := getErr()
	rc := C.realm_session_create(id, C.uint32_t(nCtx), &out, e)
	runtime.KeepAlive(m)
	if err := result(rc, e); err != nil {
		return nil, err
	}
	return newSession(uint64(out), m), nil
}

// Precision is how a session computes (SessionOptions.Precision).
type Precision int32

const (
	// PrecisionExact dequantizes every weight to float32 (the default, NewSession's).
	PrecisionExact Precision = C.REALM_PRECISION_EXACT
	// PrecisionFast keeps 4-bit weights for torch's int4 kernels with bfloat16 activations:
	// logits ~0.07 from exact on average, the top ones recomputed in float32.
	PrecisionFast Precision = C.REALM_PRECISION_FAST
)

// SessionOptions are the options of NewSessionWith.  The zero value is NewSession(0)'s session.
type SessionOptions struct {
	NCtx      int       // KV cache positions; 0 = the default, min(2048, NCtxTrain)
	Precision Precision // PrecisionExact (the zero value) or PrecisionFast
	Device    string    // "cpu" (also ""), "cuda" or "cuda:N"; ErrUnsupported without CUDA
}

// NewSessionWith creates a session with options (realm_session_create_ex): ErrRange when
// NCtx > NCtxTrain, ErrArg for an unknown Precision or a malformed Device, ErrUnsupported for a
// CUDA device where CUDA is not available.
func (m *Model) NewSessionWith(o SessionOptions) (*Session, error) {
	id, err := m.handle("Model.NewSessionWith")
	if err != nil {
		return nil, err
	}
	if o.NCtx < 0 || o.NCtx > math.MaxUint32 {
		return nil, errf(CodeArg, "Model.NewSessionWith: NCtx %d is outside [0, %d]", o.NCtx, uint32(math.MaxUint32))
	}
	p := (*C.realm_session_params)(C.calloc(1, C.sizeof_realm_session_params))
	defer C.free(unsafe.Pointer(p))
	C.realm_session_params_default(p)
	p.n_ctx = C.uint32_t(o.NCtx)
	p.precision = C.int32_t(o.Precision)
	if o.Device != "" {
		p.device = C.CString(o.Device)
		defer C.free(unsafe.Pointer(p.device))
	}
	var out C.uint64_t
	e := getErr()
	rc := C.realm_session_create_ex(id, p, &out, e)
	runtime.KeepAlive(m)
	if err := result(rc, e); err != nil {
		return nil, err
	}
	return newSession(uint64(out), m), nil
}

func newSession(id uint64, m *Model) *Session {
	s := &Session{model: m}
	s.id.Store(id)
	runtime.SetFinalizer(s, (*Session).finalize)
	return s
}

func freeSession(id uint64) error {
	e := getErr()
	return result(C.realm_session_free(C.uint64_t(id), e), e)
}

func (s *Session) finalize() { _ = freeSession(s.id.Swap(0)) }

func (s *Session) handle(fn string) (C.uint64_t, error) {
	if s == nil {
		return 0, errf(CodeArg, "%s: the session is nil", fn)
	}
	id := s.id.Load()
	if id == 0 {
		return 0, errf(CodeNotFound, "%s: the session is closed", fn)
	}
	return C.uint64_t(id), nil
}

// ID returns the session's id (0 once closed).
func (s *Session) ID() uint64 { return s.id.Load() }

// Model returns the model the session runs.
func (s *Session) Model() *Model { return s.model }

// Close frees the session and its cache.  Closing twice is a no-op.
func (s *Session) Close() error {
	if s == nil {
		return nil
	}
	id := s.id.Swap(0)
	if id == 0 {
		return nil
	}
	runtime.SetFinalizer(s, nil)
	return freeSession(id)
}

// Fork returns a new session on the same model holding a copy of this one's cache.
func (s *Session) Fork() (*Session, error) {
	id, err := s.handle("Session.Fork")
	if err != nil {
		return nil, err
	}
	var out C.uint64_t
	e := getErr()
	rc := C.realm_session_fork(id, &out, e)
	runtime.KeepAlive(s)
	if err := result(rc, e); err != nil {
		return nil, err
	}
	return newSession(uint64(out), s.model), nil
}

// Reset forgets every cached position.
func (s *Session) Reset() error {
	id, err := s.handle("Session.Reset")
	if err != nil {
		return err
	}
	e := getErr()
	rc := C.realm_session_reset(id, e)
	runtime.KeepAlive(s)
	return result(rc, e)
}

// Truncate keeps the first n cached positions; ErrRange when n is more than the session holds.
func (s *Session) Truncate(n int) error {
	id, err := s.handle("Session.Truncate")
	if err != nil {
		return err
	}
	if n < 0 || n > math.MaxUint32 {
		return errf(CodeRange, "Session.Truncate: n %d is outside [0, %d]", n, uint32(math.MaxUint32))
	}
	e := getErr()
	rc := C.realm_session_truncate(id, C.uint32_t(n), e)
	runtime.KeepAlive(s)
	return result(rc, e)
}

// NTokens returns the number of cached positions: where the next Decode starts.
func (s *Session) NTokens() (int, error) {
	id, err := s.handle("Session.NTokens")
	if err != nil {
		return 0, err
	}
	var n C.uint32_t
	e := getErr()
	rc := C.realm_session_n_tokens(id, &n, e)
	runtime.KeepAlive(s)
	if err := result(rc, e); err != nil {
		return 0, err
	}
	return int(n), nil
}

// ModelID returns the id of the model the session runs, as the library records it.
func (s *Session) ModelID() (uint64, error) {
	id, err := s.handle("Session.ModelID")
	if err != nil {
		return 0, err
	}
	var out C.uint64_t
	e := getErr()
	rc := C.realm_session_model(id, &out, e)
	runtime.KeepAlive(s)
	if err := result(rc, e); err != nil {
		return 0, err
	}
	return uint64(out), nil
}

// NCtx returns the session's context size.
func (s *Session) NCtx() (int, error) {
	id, err := s.handle("Session.NCtx")
	if err != nil {
		return 0, err
	}
	var n C.uint32_t
	e := getErr()
	rc := C.realm_session_n_ctx(id, &n, e)
	runtime.KeepAlive(s)
	if err := result(rc, e); err != nil {
		return 0, err
	}
	return int(n), nil
}

// EmbedTokens returns the token embeddings of ids[T]: [T, D].  Reads no session state.
func (s *Session) EmbedTokens(ids []int32) ([]float32, error) {
	id, err := s.handle("Session.EmbedTokens")
	if err != nil {
		return nil, err
	}
	out := newFloats(len(ids) * s.model.dims.NEmbd)
	e := getErr()
	rc := C.realm_embed_tokens(id, int32Ptr(ids), C.size_t(len(ids)), outPtr(out), C.size_t(len(out)), e)
	runtime.KeepAlive(ids)
	runtime.KeepAlive(s)
	if err := result(rc, e); err != nil {
		return nil, err
	}
	return out, nil
}

// ForwardLayer runs hidden [T, D] at positions [pos, pos+T) through one layer and returns the
// new hidden [T, D].  It writes that layer's K/V for those positions; after the last layer the
// session's NTokens is pos+T.  len(hidden) must be a multiple of D.
func (s *Session) ForwardLayer(layer, pos int, hidden []float32) ([]float32, error) {
	id, err := s.handle("Session.ForwardLayer")
	if err != nil {
		return nil, err
	}
	d := s.model.dims.NEmbd
	if len(hidden)%d != 0 {
		return nil, errf(CodeArg, "Session.ForwardLayer: len(hidden) %d is not a multiple of n_embd %d", len(hidden), d)
	}
	if layer < 0 || layer > math.MaxUint32 || pos < 0 || pos > math.MaxUint32 {
		return nil, errf(CodeRange, "Session.ForwardLayer: layer %d or pos %d is negative or too large", layer, pos)
	}
	out := newFloats(len(hidden))
	e := getErr()
	rc := C.realm_forward_layer(id, C.uint32_t(layer), C.uint32_t(pos), floatPtr(hidden), C.size_t(len(hidden)/d),
		C.size_t(d), outPtr(out), C.size_t(len(out)), e)
	runtime.KeepAlive(hidden)
	runtime.KeepAlive(s)
	if err := result(rc, e); err != nil {
		return nil, err
	}
	return out, nil
}

// ComputeLogits applies the final norm and output head to hidden [T, D]: logits [T, V].
// Reads no session state.
func (s *Session) ComputeLogits(hidden []float32) ([]float32, error) {
	id, err := s.handle("Session.ComputeLogits")
	if err != nil {
		return nil, err
	}
	d, v := s.model.dims.NEmbd, s.model.dims.NVocab
	if len(hidden)%d != 0 {
		return nil, errf(CodeArg, "Session.ComputeLogits: len(hidden) %d is not a multiple of n_embd %d", len(hidden), d)
	}
	t := len(hidden) / d
	out := newFloats(t * v)
	e := getErr()
	rc := C.realm_compute_logits(id, floatPtr(hidden), C.size_t(t), C.size_t(d), outPtr(out), C.size_t(len(out)), e)
	runtime.KeepAlive(hidden)
	runtime.KeepAlive(s)
	if err := result(rc, e); err != nil {
		return nil, err
	}
	return out, nil
}

// Decode appends ids[T] to the sequence through every layer and returns the logits of the last
// token [V].
func (s *Session) Decode(ids []int32) ([]float32, error) { return s.decode("Session.Decode", ids, 0) }

// DecodeAll is Decode returning the logits of every token [T, V].
func (s *Session) DecodeAll(ids []int32) ([]float32, error) {
	return s.decode("Session.DecodeAll", ids, C.REALM_DECODE_ALL_LOGITS)
}

func (s *Session) decode(fn string, ids []int32, flags C.uint32_t) ([]float32, error) {
	id, err := s.handle(fn)
	if err != nil {
		return nil, err
	}
	rows := 1
	if flags&C.REALM_DECODE_ALL_LOGITS != 0 {
		rows = len(ids)
	}
	out := newFloats(rows * s.model.dims.NVocab)
	e := getErr()
	rc := C.realm_decode(id, int32Ptr(ids), C.size_t(len(ids)), flags, outPtr(out), C.size_t(len(out)), e)
	runtime.KeepAlive(ids)
	runtime.KeepAlive(s)
	if err := result(rc, e); err != nil {
		return nil, err
	}
	return out, nil
}
