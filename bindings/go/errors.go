package realm

// #include "realm.h"
import "C"

import (
	"fmt"
	"sync"
)

// Code is a result code of the C ABI (REALM_OK or a negative REALM_E_* value).
type Code int32

// The result codes of include/realm.h.
const (
	CodeOK             Code = C.REALM_OK
	CodeInternal       Code = C.REALM_E_INTERNAL
	CodeInit           Code = C.REALM_E_INIT
	CodeArg            Code = C.REALM_E_ARG
	CodeNotFound       Code = C.REALM_E_NOT_FOUND
	CodeRange          Code = C.REALM_E_RANGE
	CodeBufferTooSmall Code = C.REALM_E_BUFFER_TOO_SMALL
	CodeFormat         Code = C.REALM_E_FORMAT
	CodeUnsupported    Code = C.REALM_E_UNSUPPORTED
	CodeLimit          Code = C.REALM_E_LIMIT
	CodeBusy           Code = C.REALM_E_BUSY
	CodeConflict       Code = C.REALM_E_CONFLICT
	CodeIO             Code = C.REALM_E_IO
)

var codeNames = map[Code]string{
	CodeOK: "REALM_OK", CodeInternal: "REALM_E_INTERNAL", CodeInit: "REALM_E_INIT",
	CodeArg: "REALM_E_ARG", CodeNotFound: "REALM_E_NOT_FOUND", CodeRange: "REALM_E_RANGE",
	CodeBufferTooSmall: "REALM_E_BUFFER_TOO_SMALL", CodeFormat: "REALM_E_FORMAT",
	CodeUnsupported: "REALM_E_UNSUPPORTED", CodeLimit: "REALM_E_LIMIT", CodeBusy: "REALM_E_BUSY",
	CodeConflict: "REALM_E_CONFLICT", CodeIO: "REALM_E_IO",
}

// String returns the C name of the code, e.g. "REALM_E_NOT_FOUND".
func (c Code) String() string {
	if name, ok := codeNames[c]; ok {
		return name
	}
	return fmt.Sprintf("REALM_E_UNKNOWN(%d)", int32(c))
}

// Text returns the library's static English text for the code (realm_errstr), e.g. "not found".
func (c Code) Text() string { return C.GoString(C.realm_errstr(C.int32_t(c))) }

// Error is a failed call: the C result code and the message of that very call, which names the
// function, the argument and the offending value, e.g.
// "realm_forward_layer: layer 31 out of range [0, 30)".
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.Code.Text()
	}
	return fmt.Sprintf("realm: %s (%s)", msg, e.Code)
}

// Is reports whether target is an *Error with the same code, so that
// errors.Is(err, realm.ErrNotFound) tests the kind of failure.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinel errors, one per code, for errors.Is.
var (
	ErrInternal       = &Error{Code: CodeInternal}
	ErrInit           = &Error{Code: CodeInit}
	ErrArg            = &Error{Code: CodeArg}
	ErrNotFound       = &Error{Code: CodeNotFound}
	ErrRange          = &Error{Code: CodeRange}
	ErrBufferTooSmall = &Error{Code: CodeBufferTooSmall}
	ErrFormat         = &Error{Code: CodeFormat}
	ErrUnsupported    = &Error{Code: CodeUnsupported}
	ErrLimit          = &Error{Code: CodeLimit}
	ErrBusy           = &Error{Code: CodeBusy}
	ErrConflict       = &Error{Code: CodeConflict}
	ErrIO             = &Error{Code: CodeIO}
)

// errf builds an error detected on the Go side, before any C call.
func errf(code Code, format string, args ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Every fallible call gets its own realm_error (Go memory holding no Go pointers, so it may be
// passed to C), recycled through a pool: the message read back is the one this call wrote,
// whichever OS thread the goroutine ran the call on.
var errPool = sync.Pool{New: func() any { return new(C.realm_error) }}

func getErr() *C.realm_error { return errPool.Get().(*C.realm_error) }

// result turns a call's code and realm_error into a Go error and recycles e.
func result(rc C.int32_t, e *C.realm_error) error {
	if rc == C.REALM_OK {
		errPool.Put(e)
		return nil
	}
	err := &Error{Code: Code(rc), Message: C.GoString(&e.message[0])}
	errPool.Put(e)
	return err
}
