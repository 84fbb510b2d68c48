package realm

// #include <stdlib.h>
// #include "realm.h"
import "C"

import (
	"runtime"
	"unsafe"
)

// TokenizeFlags choose how Tokenize treats special tokens.
type TokenizeFlags uint32

const (
	AddSpecial      TokenizeFlags = C.REALM_TOKENIZE_ADD_SPECIAL   // add BOS/EOS as the model asks
	ParseSpecial    TokenizeFlags = C.REALM_TOKENIZE_PARSE_SPECIAL // "<|im_start|>" becomes that control token
	TokenizeDefault TokenizeFlags = C.REALM_TOKENIZE_DEFAULT       // both: what Generate does with a prompt
)

// Message is one turn of a conversation for ApplyChatTemplate.
type Message struct {
	Role    string // "system", "user", "assistant"
	Content string
}

// Tokenize turns UTF-8 text into token ids.
func (m *Model) Tokenize(text string, flags TokenizeFlags) ([]int32, error) {
	id, err := m.handle("Model.Tokenize")
	if err != nil {
		return nil, err
	}
	ids := make([]int32, len(text)+8) // one token per byte at most, plus specials
	for {
		var n C.size_t
		e := getErr()
		rc := C.realm_tokenize(id, stringPtr(text), C.size_t(len(text)), C.uint32_t(flags),
			(*C.int32_t)(unsafe.Pointer(&ids[0])), C.size_t(len(ids)), &n, e)
		runtime.KeepAlive(text)
		if rc == C.REALM_E_BUFFER_TOO_SMALL && int(n) > len(ids) {
			errPool.Put(e)
			ids = make([]int32, int(n))
			continue
		}
		runtime.KeepAlive(m)
		if err := result(rc, e); err != nil {
			return nil, err
		}
		return ids[:int(n):int(n)], nil
	}
}

// Detokenize turns token ids into text (bytes that are not valid UTF-8 become U+FFFD).
func (m *Model) Detokenize(ids []int32) (string, error) {
	id, err := m.handle("Model.Detokenize")
	if err != nil {
		return "", err
	}
	s, err := twoCallString(16*len(ids)+16, func(buf *C.char, cap C.size_t, size *C.size_t, e *C.realm_error) C.int32_t {
		return C.realm_detokenize(id, int32Ptr(ids), C.size_t(len(ids)), buf, cap, size, e)
	})
	runtime.KeepAlive(ids)
	runtime.KeepAlive(m)
	return s, err
}

// TokenPiece returns the raw bytes of one token (possibly part of a UTF-8 character).
func (m *Model) TokenPiece(token int32) ([]byte, error) {
	id, err := m.handle("Model.TokenPiece")
	if err != nil {
		return nil, err
	}
	s, err := twoCallString(32, func(buf *C.char, cap C.size_t, size *C.size_t, e *C.realm_error) C.int32_t {
		return C.realm_token_piece(id, C.int32_t(token), buf, cap, size, e)
	})
	runtime.KeepAlive(m)
	if err != nil {
		return nil, err
	}
	return []byte(s), nil
}

// ApplyChatTemplate renders the model's chat template for the messages; addGenerationPrompt
// ends the text with the assistant's turn opening.  ErrRange when the model has no template.
func (m *Model) ApplyChatTemplate(messages []Message, addGenerationPrompt bool) (string, error) {
	id, err := m.handle("Model.ApplyChatTemplate")
	if err != nil {
		return "", err
	}
	n := len(messages)
	// Two C arrays of C strings (Go memory may not hold pointers handed to C).
	var roles, contents **C.char
	if n > 0 {
		roles = (**C.char)(C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof((*C.char)(nil)))))
		contents = (**C.char)(C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof((*C.char)(nil)))))
		defer C.free(unsafe.Pointer(roles))
		defer C.free(unsafe.Pointer(contents))
		r, c := unsafe.Slice(roles, n), unsafe.Slice(contents, n)
		for i, msg := range messages {
			r[i], c[i] = C.CString(msg.Role), C.CString(msg.Content)
		}
		defer func() {
			for i := 0; i < n; i++ {
				C.free(unsafe.Pointer(r[i]))
				C.free(unsafe.Pointer(c[i]))
			}
		}()
	}
	var flags C.uint32_t
	if addGenerationPrompt {
		flags = C.REALM_CHAT_ADD_GENERATION_PROMPT
	}
	s, err := twoCallString(256, func(buf *C.char, cap C.size_t, size *C.size_t, e *C.realm_error) C.int32_t {
		return C.realm_chat_template(id, roles, contents, C.size_t(n), flags, buf, cap, size, e)
	})
	runtime.KeepAlive(m)
	return s, err
}

// stringPtr points at a Go string's bytes without copying (C only reads them during the call;
// an empty string gives NULL, which the ABI accepts with length 0).
func stringPtr(s string) *C.char {
	if len(s) == 0 {
		return nil
	}
	return *(**C.char)(unsafe.Pointer(&s))
}

// ApplyChatTemplateJSON is ApplyChatTemplate with the messages given as a JSON array of message
// objects, e.g. `[{"role": "user", "content": "Hi"}]` (fields beyond role and content reach the
// template).  ErrArg on bad JSON.
func (m *Model) ApplyChatTemplateJSON(messagesJSON string, addGenerationPrompt bool) (string, error) {
	id, err := m.handle("Model.ApplyChatTemplateJSON")
	if err != nil {
		return "", err
	}
	cjson := C.CString(messagesJSON)
	defer C.free(unsafe.Pointer(cjson))
	var flags C.uint32_t
	if addGenerationPrompt {
		flags = C.REALM_CHAT_ADD_GENERATION_PROMPT
	}
	s, err := twoCallString(256, func(buf *C.char, cap C.size_t, size *C.size_t, e *C.realm_error) C.int32_t {
		return C.realm_chat_template_json(id, cjson, flags, buf, cap, size, e)
	})
	runtime.KeepAlive(m)
	return s, err
}
