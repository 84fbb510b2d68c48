"""The wasmtime host: one Engine and one Linker for every tenant.

    from realm_embed.wasm import Host
    host = Host()
    mid = realm.store_model()
    with host.tenant("generate", mid) as t:          # the reference guest, shipped in the package
        print(t.generate("What is the capital of France?", max_tokens=32).text)

The Linker holds the "realm" imports once (define_func, store-independent).  A host function
learns which tenant called it from a thread-local set by Tenant.call: wasm runs synchronously
on the calling thread, so the innermost tenant call on this thread is the caller.  The engine
counts fuel and epochs; a daemon thread advances the epoch every `tick_s` seconds so that each
tenant's wall-clock deadline is enforced inside wasm code, and imports check it too.
"""
from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import struct
import threading
import time
from pathlib import Path

import wasmtime

from .. import api
from ..errors import E_INTERNAL, NotFoundError, RealmError
from ..storage import REGISTRY
from .abi import ABI_VERSION, MAX_MODULE_BYTES, GuestModule, check_module
from .errors import GuestAbiError, GuestStop
from .imports import IMPORTS
from .memory import GuestMemory

_CURRENT = threading.local()
_MASK = {"u": 0xFFFFFFFF, "p": 0xFFFFFFFF}
_UNBUDGETED = {"abi_version", "last_error", "now_us"}     # never fail, cost nothing

GUESTS_DIR = Path(__file__).resolve().parent.parent / "guests"


class HostCallbackError(Exception):
    """An exception raised by the host application's own callback (on_emit, on_log): it stops
    the guest and reaches the caller of the guest unchanged."""

    def __init__(self, original: BaseException):
        super().__init__(repr(original))
        self.original = original


def current_tenant():
    t = getattr(_CURRENT, "tenant", None)
    if t is None:
        raise RuntimeError("a realm import was called outside Tenant.call")
    return t


def _host_function(name: str, sig, fn):
    """The body of import `name`: call(store, args) with the guest's arguments already converted
    (pointers and sizes unsigned, handles and ids signed); store is the calling instance's
    context, valid for this call only."""
    budgeted = name not in _UNBUDGETED
    sets_error = name != "last_error"
    perf = time.perf_counter
    local = _CURRENT

    def call(store, args):
        t = getattr(local, "tenant", None)
        if t is None:
            raise RuntimeError("a realm import was called outside Tenant.call")
        started = perf()
        try:
            if started >= t.deadline:                   # GuestLimitError: a trap
                raise t._past_deadline()
            if budgeted:
                t.check_host_budget()                   # LimitError: a result code
            result = fn(t, GuestMemory(t.memory, store, name, t._base), *args)
            if sets_error:
                t.last_error = ""
            return 0 if result is None else result
        except GuestStop as e:
            e.tenant, t.fault = t, e
            raise
        except HostCallbackError as e:
            e.tenant, t.fault = t, e.original
            raise
        except RealmError as e:
            t.last_error = t.last_failure = f"realm.{name}: {e.message}"
            return e.code
        except Exception as e:                          # a bug in the host: contained to this guest
            t.last_error = t.last_failure = f"realm.{name}: internal error: {type(e).__name__}: {e}"
            return E_INTERNAL
        finally:
            t.account(name, perf() - started)

    return call


def _wasmtime_py_adapter(sig, call):
    """For wasmtime-py's own trampoline (Linker.define_func): it passes i32s signed."""
    masks = [_MASK.get(k) for k in sig.params]
    return lambda caller, *args: call(caller, [a & mask if mask else a for a, mask in zip(args, masks)])


# ---- a leaner trampoline -----------------------------------------------------------------------
# wasmtime-py's generic trampoline wraps every argument in a Val and looks its type up (~10 µs for
# an 8-argument import, more than the whole import's own work); this one unpacks the raw
# wasmtime_val_t array with one struct call (~1.5 µs).  Types are not checked here: wasmtime
# checks the guest's import types against the host's at instantiation (and abi.check_module
# before that).  It keeps wasmtime-py's contract for exceptions (LAST_EXCEPTION and a trap,
# re-raised by the Func call that entered wasm) and, like wasmtime-py, holds each function's data
# until wasmtime finalizes it.  Where wasmtime-py lacks these internals, Linker.define_func runs.

class _CallerStore:
    """The calling instance's context, as a wasmtime-py Storelike, valid during one call."""
    __slots__ = ("_caller", "_ctx")

    def __init__(self, caller):
        self._caller, self._ctx = caller, None

    def _context(self):
        ctx = self._ctx
        if ctx is None:
            if self._caller is None:
                raise ValueError("the caller is no longer valid: its import call returned")
            ctx = self._ctx = _caller_context(self._caller)
        return ctx


try:
    from wasmtime import _ffi as _wffi, _func as _wfunc
    _VAL_SIZE = ctypes.sizeof(_wffi.wasmtime_val_t)
    _VAL_OFFSET = _wffi.wasmtime_val_t.of.offset
    _KIND = {"i": _wffi.WASMTIME_I32.value, "I": _wffi.WASMTIME_I64.value}
    _caller_context = getattr(_wffi, "_wasmtime_caller_context", None) or _wffi.wasmtime_caller_context
    _NATIVE = (hasattr(_wfunc, "LAST_EXCEPTION") and hasattr(wasmtime.Trap, "_consume")
               and callable(getattr(_wffi, "wasmtime_linker_define_func", None))
               and callable(getattr(_wffi, "wasmtime_caller_context", None))
               and _VAL_SIZE >= _VAL_OFFSET + 8)
except (ImportError, AttributeError):
    _NATIVE = False

if _NATIVE:
    _ENTRIES: dict[int, tuple] = {}
    _ENTRY_IDS = itertools.count(1)
    _VALUE = {"h": ("i", 4), "i": ("i", 4), "u": ("I", 4), "p": ("I", 4), "I": ("q", 8), "f": ("f", 4)}

    def _entry(sig, call) -> tuple:
        fmt = "<" + "".join(f"{_VAL_OFFSET}x{_VALUE[k][0]}{_VAL_SIZE - _VAL_OFFSET - _VALUE[k][1]}x"
                            for k in sig.params)
        code, bits = ("i", 32) if sig.result == "i" else ("q", 64)
        result = struct.Struct(f"<B{_VAL_OFFSET - 1}x{code}")
        return (call, struct.Struct(fmt).unpack, len(sig.params) * _VAL_SIZE, result.pack, result.size,
                _KIND[sig.result], 1 << (bits - 1), (1 << bits) - 1)

    @_wffi.wasmtime_func_callback_t
    def _trampoline(env, caller, params, nparams, results, nresults):
        store = _CallerStore(caller)
        try:
            call, unpack, nbytes, pack, rbytes, kind, half, mask = _ENTRIES[env]
            r = call(store, unpack(ctypes.string_at(params, nbytes)) if nbytes else ())
            ctypes.memmove(results, pack(kind, ((r + half) & mask) - half), rbytes)
            return 0
        except BaseException as e:
            _wfunc.LAST_EXCEPTION = e
            return ctypes.cast(wasmtime.Trap("python exception")._consume(), ctypes.c_void_p).value
        finally:
            store._caller = store._ctx = None

    @ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    def _finalize(env):
        _ENTRIES.pop(env, None)


def _define(linker, name: str, sig, call) -> None:
    ty = sig.functype()
    if not _NATIVE:
        linker.define_func("realm", name, ty, _wasmtime_py_adapter(sig, call), access_caller=True)
        return
    key = next(_ENTRY_IDS)
    _ENTRIES[key] = _entry(sig, call)
    module, fname = b"realm", name.encode()
    error = _wffi.wasmtime_linker_define_func(linker.ptr(), ctypes.create_string_buffer(module), len(module),
                                              ctypes.create_string_buffer(fname), len(fname), ty.ptr(),
                                              _trampoline, key, _finalize)
    if error:
        _ENTRIES.pop(key, None)
        raise wasmtime.WasmtimeError._from_ptr(error)


class Host:
    """One wasmtime Engine + Linker; hands out tenants.  Thread-safe; close() when done.

    precision: the default for its tenants' sessions, "exact" (f32) or "fast" (4-bit weights);
    host.tenant(..., precision=...) overrides it per tenant."""

    def __init__(self, *, tick_s: float = 0.01, precision: str = "exact"):
        from .tenants import check_precision
        self.precision = check_precision(precision)
        cfg = wasmtime.Config()
        cfg.consume_fuel = True
        cfg.epoch_interruption = True
        self.engine = wasmtime.Engine(cfg)
        self.linker = wasmtime.Linker(self.engine)
        self.signatures = {}
        for name, (sig, fn) in IMPORTS.items():
            _define(self.linker, name, sig, _host_function(name, sig, fn))
            self.signatures[name] = sig
        self.tick_s = tick_s
        self._modules: dict[bytes, GuestModule] = {}
        self._info: dict[int, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="realm-wasm-epoch", daemon=True)
        self._ticker.start()

    abi_version = ABI_VERSION

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.engine.increment_epoch()

    def close(self) -> None:
        self._stop.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- modules ------------------------------------------------------------------------------

    def load(self, source) -> GuestModule:
        """A guest from bytes, a path, or the name of a shipped guest ("generate", "ban_word").
        Compiled once per content; the import check runs before anything is instantiated."""
        if isinstance(source, GuestModule):
            return source
        wasm = _read_guest(source)
        key = hashlib.sha256(wasm).digest()
        with self._lock:
            if key in self._modules:
                return self._modules[key]
        try:
            module = wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as e:
            raise GuestAbiError(f"not a valid WebAssembly module: {str(e).splitlines()[0]}") from None
        checked = check_module(module, wasm, self.signatures)
        with self._lock:
            return self._modules.setdefault(key, checked)

    def resolve(self, store, imp, memory):
        return memory if imp.module == "env" else self.linker.get(store, imp.module, imp.name)

    def tenant(self, guest, model_id: int, **kwargs):
        """A new tenant running `guest` on the stored model `model_id`; kwargs: limits, name,
        on_emit, on_log, precision (see Tenant)."""
        from .tenants import Tenant
        return Tenant(self, self.load(guest), model_id, **kwargs)

    # ---- models (shared by every tenant; the host never copies weights) -----------------------

    def model(self, model_id: int):
        return REGISTRY.get(model_id)

    def model_info(self, model_id: int) -> dict:
        info = self._info.get(model_id)
        if info is None:
            info = self._info[model_id] = api.get_model_info(model_id)   # ids are never reused
        REGISTRY.get(model_id)             # removed since: NotFoundError
        return info


def guest_path(name: str = "generate") -> Path:
    """The shipped guest `name`.wasm; in a source checkout a missing one is built with make."""
    path = GUESTS_DIR / f"{name}.wasm"
    if not path.is_file():
        src = Path(__file__).resolve().parents[2] / "bindings" / "wasm"
        if (src / f"{name}.c").is_file():
            import subprocess
            r = subprocess.run(["make", "-s", "-C", str(src)], capture_output=True, text=True)
            if r.returncode != 0:
                raise NotFoundError(f"guest {path} is not built and `make -C {src}` failed (it needs clang and "
                                    f"lld: apt-get install clang lld): {r.stderr.strip()[-300:]}")
        if not path.is_file():
            raise NotFoundError(f"no shipped guest {name!r}: {path} does not exist")
    return path


def _read_guest(source) -> bytes:
    """bytes (.wasm or WAT text), WAT source text, a path (.wasm or .wat), or a shipped guest name."""
    if isinstance(source, str) and source.lstrip().startswith("(module"):
        source = source.encode()
    if isinstance(source, (bytes, bytearray, memoryview)):
        wasm = bytes(source)
    elif isinstance(source, str) and "/" not in source and not source.endswith((".wasm", ".wat")):
        wasm = guest_path(source).read_bytes()
    else:
        path = Path(os.fspath(source))
        try:
            if path.stat().st_size > MAX_MODULE_BYTES:
                raise GuestAbiError(f"{path} is larger than {MAX_MODULE_BYTES >> 20} MiB")
            wasm = path.read_bytes()
        except OSError as e:
            from ..errors import RealmIOError
            raise RealmIOError(f"cannot read guest {path}: {e.strerror}") from None
    if len(wasm) > MAX_MODULE_BYTES:
        raise GuestAbiError(f"the guest is {len(wasm)} bytes, more than {MAX_MODULE_BYTES >> 20} MiB")
    if not wasm.startswith(b"\0asm"):
        try:
            wasm = wasmtime.wat2wasm(wasm.decode("utf-8"))
        except (UnicodeDecodeError, wasmtime.WasmtimeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise GuestAbiError(f"not a WebAssembly module (no \\0asm magic) and not WAT text: {first}") from None
    return bytes(wasm)
