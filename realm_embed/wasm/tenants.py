"""A tenant: one guest instance in its own Store, with its own handles, sessions and limits.

Tenants share the Host's Engine and Linker and the stored model (weights live once); nothing
else.  A guest names models and sessions by small handles from its own table, so it can reach
only what it created.  Each call into the guest (a "step") gets fresh fuel, a wall-clock
deadline (epoch), a host-time budget and output/log budgets.  A stopped call raises a GuestStop
on the host side and leaves the tenant's host state intact; its sessions are freed by close().
"""
from __future__ import annotations

import logging
import math
import struct
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import wasmtime

from .. import api
from ..errors import ArgumentError, BusyError, LimitError, NotFoundError
from ..model import PRECISIONS
from .errors import GuestLimitError, GuestStop, GuestTrap, error_for
from .host import _CURRENT, HostCallbackError
from .imports import MODEL, SESSION
from .memory import MASK32, BaseCache, GuestMemory

log = logging.getLogger("realm_embed.wasm")

FINISH = {0: "error", 1: "stop", 2: "eos", 3: "length", 4: "cancelled"}
RAW, FUSED, FULL_LOGITS = 1, 2, 4          # REALM_GUEST_* flags of the generator convention


def check_precision(precision, where: str = "precision") -> str:
    """precision, if it is one the runtime knows ("exact" | "fast"); else an ArgumentError."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ArgumentError(f"{where}={precision!r} must be one of {', '.join(map(repr, PRECISIONS))}")
    return precision


@dataclass(frozen=True)
class Limits:
    """Per-tenant limits; the per-call ones reset at every call into the guest."""
    memory_mib: float = 64.0            # the guest's linear memory
    fuel: int = 10_000_000_000          # wasm instructions per call (0 = unlimited)
    deadline_s: float = 300.0           # wall clock per call (epoch interruption + checks in imports)
    host_time_s: float = 300.0          # time spent inside imports per call (then REALM_E_LIMIT)
    max_sessions: int = 8               # live sessions
    max_kv_tokens: int = 32768          # sum of n_ctx over live sessions
    max_output_bytes: int = 1 << 20     # realm_emit bytes per call
    max_log_bytes: int = 64 << 10       # realm_log bytes per call

    def validate(self) -> None:
        for name in ("memory_mib", "deadline_s", "host_time_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ArgumentError(f"Limits.{name}={v!r} must be a positive number")
        for name in ("fuel", "max_sessions", "max_kv_tokens", "max_output_bytes", "max_log_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ArgumentError(f"Limits.{name}={v!r} must be a non-negative integer")
        if self.memory_mib > 4096:
            raise ArgumentError(f"Limits.memory_mib={self.memory_mib} exceeds a 32-bit memory (4096 MiB)")


@dataclass
class GuestResult:
    text: str
    token_ids: list[int]
    finish_reason: str            # "eos" | "stop" | "length" | "cancelled"
    n_prompt: int
    seconds: float = 0.0
    host_calls: int = 0
    host_seconds: float = 0.0     # inside imports (compute included)
    compute_seconds: float = 0.0  # inside the runtime's compute calls
    memory_bytes: int = 0         # the guest's linear memory after the call


class Handles:
    """Small positive ints, never reused; a wrong kind is as unknown as a handle never made."""

    def __init__(self, max_live: int):
        self._items: dict[int, tuple[str, object]] = {}
        self._next = 1
        self._max = max_live

    def add(self, kind: str, obj) -> int:
        if len(self._items) >= self._max or self._next > 0x7FFFFFFF:
            raise LimitError(f"this guest holds {len(self._items)} handles, its limit")
        h, self._next = self._next, self._next + 1
        self._items[h] = (kind, obj)
        return h

    def get(self, kind: str, h: int):
        item = self._items.get(h)
        if item is None or item[0] != kind:
            raise NotFoundError(f"{kind} handle {h} not found")
        return item[1]

    def pop(self, kind: str, h: int):
        obj = self.get(kind, h)
        del self._items[h]
        return obj

    def of_kind(self, kind: str) -> list:
        return [obj for k, obj in self._items.values() if k == kind]


def _cause(message: str) -> str:
    """The one line of a wasmtime error that says what happened (not the backtrace)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("wasm trap:"):
            return ln[len("wasm trap:"):].strip()
    return lines[-1] if lines else "no message"


def _i32(v: int) -> int:
    v &= MASK32
    return v - (1 << 32) if v >= 1 << 31 else v


class Tenant:
    """precision: how every session this guest creates computes ("exact" | "fast"; None = the
    host's).  The host picks it, not the guest: it is a platform policy (cost, accuracy), so the
    guest ABI has no way to ask for another; session_fork keeps its parent's."""

    def __init__(self, host, module, model_id: int, *, limits: Limits | None = None, name: str | None = None,
                 on_emit=None, on_log=None, precision: str | None = None):
        self.host, self.module, self.model_id = host, module, model_id
        self.limits = limits or Limits()
        self.limits.validate()
        self.precision = host.precision if precision is None else check_precision(precision)
        self.name = name or f"tenant-{id(self):x}"
        self.on_emit, self.on_log = on_emit, on_log
        host.model(model_id)                            # NotFoundError for an unknown model
        self.handles = Handles(self.limits.max_sessions + 1)
        self.model_handle = self.handles.add(MODEL, model_id)
        self.last_error = ""          # the guest's view: the last import call's message
        self.last_failure = ""        # the host's view: the last failed import of this call
        self.fault = None
        self.output = bytearray()
        # over the tenant's life: calls into the guest, import calls (all / per name), time inside
        # imports and inside the runtime's compute, the largest KV cache its sessions reserved
        self.stats = {"calls": 0, "compute_seconds": 0.0, "kv_bytes_peak": 0}
        self.host_calls = 0
        self.host_seconds = 0.0
        self.import_calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closed = False
        self._begin_step()
        self._instantiate()

    # ---- set-up -------------------------------------------------------------------------------

    def _instantiate(self) -> None:
        lim = self.limits
        mem_bytes = int(lim.memory_mib * (1 << 20)) // 65536 * 65536
        self.store = wasmtime.Store(self.host.engine)
        self.store.set_limits(memory_size=mem_bytes, table_elements=100_000, instances=1, tables=4, memories=1)
        self.memory = None
        self._base = BaseCache()          # the memory's base address, re-read whenever its size changes
        self._scratch: dict[tuple[int, int], torch.Tensor] = {}
        mt = self.module.memory_import
        if mt is not None:
            pages = mem_bytes // 65536
            if mt.limits.min > pages:
                raise GuestLimitError(f"guest {self.name} needs {mt.limits.min} pages ({mt.limits.min / 16:.1f} MiB) "
                                      f"of memory at start, more than its limit of {lim.memory_mib} MiB", "memory")
            top = pages if mt.limits.max is None else min(mt.limits.max, pages)
            self.memory = wasmtime.Memory(self.store, wasmtime.MemoryType(wasmtime.Limits(mt.limits.min, top)))
        externs = [self.host.resolve(self.store, imp, self.memory) for imp in self.module.module.imports]
        with self._running():
            try:
                self.instance = wasmtime.Instance(self.store, self.module.module, externs)
            except wasmtime.WasmtimeError as e:
                text = _cause(str(e))
                if "memory" in text and ("limit" in text or "minimum" in text):
                    raise GuestLimitError(f"guest {self.name}: {text} (limit {lim.memory_mib} MiB)", "memory") from None
                raise
        exports = self.instance.exports(self.store)
        self._funcs = {n: exports[n] for n in exports if isinstance(exports[n], wasmtime.Func)}
        if self.memory is None:
            self.memory = exports["memory"]

    # ---- calls into the guest -----------------------------------------------------------------

    def _begin_step(self) -> None:
        now = time.perf_counter()
        self.step_started, self.deadline = now, now + self.limits.deadline_s
        self.fault, self.last_failure = None, ""
        self._step_host = 0.0
        self._out_bytes = self._log_bytes = 0

    @contextmanager
    def _running(self):
        if self._closed:
            raise NotFoundError(f"tenant {self.name} is closed")
        if not self._lock.acquire(blocking=False):
            raise BusyError(f"tenant {self.name} is already running a call (one at a time)")
        prev = getattr(_CURRENT, "tenant", None)
        _CURRENT.tenant = self
        try:
            self._begin_step()
            self.store.set_fuel(self.limits.fuel or (1 << 63) - 1)
            self.store.set_epoch_deadline(max(1, math.ceil(self.limits.deadline_s / self.host.tick_s)))
            try:
                yield
            except BaseException as e:
                err = self._classify(e)
                if err is e:
                    raise
                raise err from None
        finally:
            _CURRENT.tenant = prev
            self.stats["calls"] += 1
            self._lock.release()

    def call(self, export: str, *args):
        """Call the guest's export `export`; a stopped guest raises GuestStop (see errors.py)."""
        with self._running():
            fn = self._funcs.get(export)
            if fn is None:
                raise NotFoundError(f"guest {self.name} has no exported function {export!r}")
            return fn(self.store, *args)

    def _classify(self, e: BaseException) -> BaseException:
        fault, self.fault = self.fault, None
        if fault is not None:
            return fault
        if isinstance(e, (GuestStop, HostCallbackError)) and getattr(e, "tenant", self) is not self:
            e = None                     # another tenant's exception (wasmtime-py keeps one global)
        if isinstance(e, wasmtime.Trap):
            if e.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
                return self._out_of_fuel()
            if e.trap_code == wasmtime.TrapCode.INTERRUPT:
                return self._past_deadline()
            return GuestTrap(f"guest {self.name} trapped: {_cause(e.message)}")
        if isinstance(e, wasmtime.WasmtimeError):
            return GuestTrap(f"guest {self.name} failed: {_cause(str(e))}")
        if e is None:
            if self.store.get_fuel() == 0:
                return self._out_of_fuel()
            if time.perf_counter() >= self.deadline:
                return self._past_deadline()
            return GuestTrap(f"guest {self.name} trapped (cause lost to a simultaneous trap in another tenant)")
        return e

    def _out_of_fuel(self):
        return GuestLimitError(f"guest {self.name} ran out of fuel ({self.limits.fuel} wasm instructions per call)",
                               "fuel")

    def _past_deadline(self):
        return GuestLimitError(f"guest {self.name} passed its deadline of {self.limits.deadline_s} s per call",
                               "deadline")

    # ---- services for the imports -------------------------------------------------------------

    def memory_access(self, caller, fn: str) -> GuestMemory:
        return GuestMemory(self.memory, caller, fn, self._base)

    def check_deadline(self) -> None:
        if time.perf_counter() >= self.deadline:
            raise self._past_deadline()

    def check_host_budget(self) -> None:
        if self._step_host >= self.limits.host_time_s:
            raise LimitError(f"the host-time budget of {self.limits.host_time_s} s for this call is spent")

    def account(self, name: str, seconds: float) -> None:
        self.import_calls[name] += 1
        self._step_host += seconds
        self.host_calls += 1
        self.host_seconds += seconds

    @contextmanager
    def compute(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stats["compute_seconds"] += time.perf_counter() - t0

    def scratch(self, T: int, D: int) -> torch.Tensor:
        """A [T, D] f32 tensor an import copies its input into, reused by this tenant's later calls
        (one at a time: the tenant's lock).  Only for inputs of the runtime's primitives, none of
        which keeps its input past the call."""
        buf = self._scratch.get((T, D))
        if buf is None:
            buf = torch.empty(T, D)
            if T * D <= 1 << 16:                     # decode steps and short chunks; not long prefills
                if len(self._scratch) >= 8:
                    self._scratch.clear()
                self._scratch[(T, D)] = buf
        return buf

    def timed(self, fn, *args, **kwargs):
        """fn(*args, **kwargs), its time counted as compute (compute() without a generator)."""
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.stats["compute_seconds"] += time.perf_counter() - t0

    def emit(self, data: bytes) -> None:
        if self._out_bytes + len(data) > self.limits.max_output_bytes:
            raise LimitError(f"the output budget of {self.limits.max_output_bytes} bytes per call is spent")
        self._out_bytes += len(data)
        self.output += data
        if self.on_emit is not None:
            try:
                self.on_emit(data)
            except BaseException as e:
                raise HostCallbackError(e) from e

    def log(self, level: int, text: str) -> None:
        if self._log_bytes + len(text) > self.limits.max_log_bytes:
            raise LimitError(f"the log budget of {self.limits.max_log_bytes} bytes per call is spent")
        self._log_bytes += len(text)
        if self.on_log is not None:
            try:
                self.on_log(level, text)
            except BaseException as e:
                raise HostCallbackError(e) from e
        else:
            log.log((logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)[level], "[%s] %s", self.name, text)

    def check_session_room(self, n_ctx: int) -> None:
        live = self.handles.of_kind(SESSION)
        if len(live) >= self.limits.max_sessions:
            raise LimitError(f"this guest already holds {len(live)} sessions, its limit")
        held = sum(s.n_ctx for s in live)
        if held + n_ctx > self.limits.max_kv_tokens:
            raise LimitError(f"n_ctx {n_ctx} would bring this guest's KV positions to {held + n_ctx}, over "
                             f"its limit of {self.limits.max_kv_tokens}")

    def adopt_session(self, s) -> int:
        try:
            h = self.handles.add(SESSION, s)
        except BaseException:
            api.session_free(s)
            raise
        kv = sum(x.kv.k.numel() * 2 * x.kv.k.element_size() for x in self.handles.of_kind(SESSION))
        self.stats["kv_bytes_peak"] = max(self.stats["kv_bytes_peak"], kv)
        return h

    def free_session(self, h: int) -> None:
        api.session_free(self.handles.pop(SESSION, h))

    # ---- the generator convention (realm_guest.h) ---------------------------------------------

    def generate(self, prompt: str, *, extra: str = "", max_tokens: int = 256, chat: bool = True,
                 fused: bool = False, full_logits: bool = False, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0) -> GuestResult:
        """Run a generator guest: realm_guest_input, realm_guest_generate, realm_guest_result."""
        if not isinstance(prompt, str) or not isinstance(extra, str):
            raise ArgumentError("prompt and extra must be strings")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 0 <= max_tokens < 1 << 31:
            raise ArgumentError(f"max_tokens must be an integer in [0, 2**31), got {max_tokens!r}")
        p, x = prompt.encode(), extra.encode()
        flags = (0 if chat else RAW) | (FUSED if fused else 0) | (FULL_LOGITS if full_logits else 0)
        before = (self.host_calls, self.host_seconds, self.stats["compute_seconds"])
        t0 = time.perf_counter()
        ptr = self.call("realm_guest_input", _i32(len(p) + len(x))) & MASK32
        if ptr == 0:
            raise LimitError(f"guest {self.name} has no room for an input of {len(p) + len(x)} bytes")
        GuestMemory(self.memory, self.store, "realm_guest_input", self._base).write(ptr, p + x, "input")
        self.output = bytearray()
        rc = self.call("realm_guest_generate", len(p), len(x), max_tokens, _i32(flags), float(temperature),
                       _i32(top_k), float(top_p), seed - (1 << 64) if seed >= 1 << 63 else seed)
        failure = self.last_failure
        m = GuestMemory(self.memory, self.store, "realm_guest_result", self._base)
        res = self.call("realm_guest_result") & MASK32
        finish, n_prompt, n_gen, ids = struct.unpack("<iIII", m.read(res, 16, "result"))
        if rc < 0:
            raise error_for(rc, f"guest {self.name} returned {rc}: {failure or 'no import failed'}")
        return GuestResult(
            text=bytes(self.output).decode("utf-8", "replace"), token_ids=m.read_i32(ids, n_gen, "ids"),
            finish_reason=FINISH.get(finish, str(finish)), n_prompt=n_prompt, seconds=time.perf_counter() - t0,
            host_calls=self.host_calls - before[0], host_seconds=self.host_seconds - before[1],
            compute_seconds=self.stats["compute_seconds"] - before[2], memory_bytes=self.memory_bytes)

    # ---- state --------------------------------------------------------------------------------

    @property
    def memory_bytes(self) -> int:
        return 0 if self._closed else self.memory.data_len(self.store)

    def sessions(self) -> list:
        return self.handles.of_kind(SESSION)

    def close(self) -> None:
        """Free this tenant's sessions and its instance.  Idempotent."""
        if self._closed:
            return
        with self._lock:
            for s in self.handles.of_kind(SESSION):
                api.session_free(s)
            self._closed = True
            self.instance = self.memory = self._funcs = None
            self.store = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"<Tenant {self.name} model={self.model_id:#x} {self.precision} "
                f"sessions={len(self.sessions())}>")
