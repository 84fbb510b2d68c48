// Package realm runs LLM inference in-process through librealm.so, the C ABI of realm-embed
// (include/realm.h).  Python and torch live inside the library; a Go program sees models,
// sessions, samplers and errors only.
//
//	if err := realm.Init(); err != nil { log.Fatal(err) }
//	m, _ := realm.StoreDefaultModel(0)
//	defer m.Close()
//	s, _ := m.NewSession(0)
//	defer s.Close()
//	prompt, _ := m.ApplyChatTemplate([]realm.Message{{Role: "user", Content: "What is the capital of France?"}}, true)
//	realm.Generate(ctx, s, prompt, realm.GenerateOptions{MaxTokens: 32}, func(p string) error {
//		fmt.Print(p)
//		return nil
//	})
//
// Building: the flags come from pkg-config (realm.pc, written next to librealm.so by the Python
// package's build); point PKG_CONFIG_PATH at it:
//
//	export PKG_CONFIG_PATH=$(python -m realm_embed config --pkgconfigdir)
//	go build ./...
//
// The library is found at run time through the rpath that realm.pc's Libs put in the binary.
//
// Errors are *Error values carrying the C result code: errors.Is(err, realm.ErrNotFound).  Each
// message belongs to its own call (the binding passes a per-call realm_error), however the
// goroutine moves between OS threads.  Objects have Close methods and finalizers; Close them
// when done, since a finalizer may run late or never.
package realm

/*
#cgo pkg-config: realm
#cgo LDFLAGS: -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include "realm.h"

// The path of the librealm.so this process loaded ("" if unknown).
static const char *realm_go_library_path(void) {
	Dl_info info;
	if (dladdr((void *)&realm_abi_version, &info) && info.dli_fname)
		return info.dli_fname;
	return "";
}
*/
import "C"

import (
	"fmt"
	"sync"
)

// BindingABIVersion is the REALM_ABI_VERSION this binding was written for.  Init refuses a
// library that reports another one.
const BindingABIVersion = 1

// The header compiled in must be the one this binding was written for (a compile error otherwise).
var (
	_ [C.REALM_ABI_VERSION - BindingABIVersion]struct{}
	_ [BindingABIVersion - C.REALM_ABI_VERSION]struct{}
)

// Version returns the library's version, "MAJOR.MINOR.PATCH".  It never starts Python.
func Version() string { return C.GoString(C.realm_version()) }

// VersionNumber returns the library's version as MAJOR*1000000 + MINOR*1000 + PATCH.
func VersionNumber() int { return int(C.realm_version_number()) }

// ABIVersion returns the library's REALM_ABI_VERSION.  It never starts Python.
func ABIVersion() int { return int(C.realm_abi_version()) }

// LibraryPath returns the path of the librealm.so this process loaded.
func LibraryPath() string { return C.GoString(C.realm_go_library_path()) }

var (
	abiOnce sync.Once
	abiErr  error
)

// checkABI refuses a library with another ABI version, once per process.
func checkABI() error {
	abiOnce.Do(func() { abiErr = abiMismatch(ABIVersion(), LibraryPath()) })
	return abiErr
}

func abiMismatch(lib int, path string) error {
	if lib == BindingABIVersion {
		return nil
	}
	return &Error{Code: CodeInit, Message: fmt.Sprintf(
		"realm.Init: %s has ABI version %d, but this Go binding was written for ABI version %d: "+
			"use a binding and a library of the same release", path, lib, BindingABIVersion)}
}

// Init checks the library's ABI version and starts the runtime (an embedded CPython importing
// torch: about a second).  Call it once early in main: otherwise the first call that needs the
// runtime pays that second.  Idempotent and safe from any goroutine.  A failed start-up is
// permanent: every later call returns the same ErrInit.
func Init() error {
	if err := checkABI(); err != nil {
		return err
	}
	e := getErr()
	return result(C.realm_init(e), e)
}
