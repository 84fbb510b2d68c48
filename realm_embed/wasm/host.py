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

import hashlib
import os
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
    masks = [_MASK.get(k) for k in sig.params]

    def call(caller, *args):
        t = current_tenant()
        args = [a & mask if mask else a for a, mask in zip(args, masks)]
        started = time.perf_counter()
        try:
            t.check_deadline()                          # raises GuestLimitError: a trap
            if name not in _UNBUDGETED:
                t.check_host_budget()                   # LimitError: a result code
            m = t.memory_access(caller, name)
            result = fn(t, m, *args)
            if name != "last_error":
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
            t.account(name, time.perf_counter() - started)

    return call


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
            self.linker.define_func("realm", name, sig.functype(), _host_function(name, sig, fn), access_caller=True)
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
