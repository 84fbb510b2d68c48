"""Sessions: one tenant's sequence, its KV cache, and the compute primitives that touch it.

Every primitive validates everything before it writes, and a failure after the first write
restores what it overwrote, so a failed call leaves the session exactly as before.
"""
from __future__ import annotations

import itertools
import math
import threading

import torch

from .errors import ArgumentError, NotFoundError, RangeError
from .model import PRECISIONS, transformer_for
from .storage import REGISTRY, Model

DEFAULT_N_CTX = 2048


class KVCache:
    """Per-layer K/V for one sequence.  k, v: [L, Hkv, n_ctx, Dh], allocated once.

    On the CPU with torch.empty, so untouched positions cost address space, not memory.  On CUDA
    zero-filled: a captured decode step (cuda_graph.py) attends over every position under a
    mask, and a masked position still multiplies its value by 0, which must not be NaN garbage;
    there the capacity is also rounded up to a multiple of 16, the attention kernels' alignment
    (else SDPA pads the mask with an extra copy per layer).  Positions past n_ctx stay unused."""

    mask = None            # attention over [0, S) with no mask; cuda_graph.StepKV sets one
    graph = None           # the session's captured decode step (cuda_graph.GraphStep), made on first use

    def __init__(self, n_layer: int, n_head_kv: int, n_ctx: int, head_dim: int, device, dtype=torch.float32):
        cuda = torch.device(device).type == "cuda"
        alloc, capacity = (torch.zeros, -(-n_ctx // 16) * 16) if cuda else (torch.empty, n_ctx)
        self.k = alloc(n_layer, n_head_kv, capacity, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k) if alloc is torch.empty else torch.zeros_like(self.k)
        self.layers = list(zip(self.k.unbind(0), self.v.unbind(0)))   # per-layer views [Hkv, n_ctx, Dh]
        self.filled = [0] * n_layer      # valid positions per layer

    def update(self, layer: int, pos: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v: [Hkv, T, Dh] at [pos, pos+T); later positions of that layer are dropped.
        Returns the layer's keys and values [Hkv, S, Dh], S = pos + T."""
        end = pos + k.shape[1]
        lk, lv = self.layers[layer]
        lk[:, pos:end] = k
        lv[:, pos:end] = v
        self.filled[layer] = end
        return lk[:, :end], lv[:, :end]

    def truncate(self, n: int) -> None:
        self.filled = [min(f, n) for f in self.filled]

    def snapshot(self, pos: int, end: int, layers) -> list:
        """What a write to [pos, end) in `layers` would destroy (nothing in the common append case)."""
        saved = []
        for layer in layers:
            stop = min(self.filled[layer], end)
            keep = (self.k[layer, :, pos:stop].clone(), self.v[layer, :, pos:stop].clone()) if stop > pos else None
            saved.append((layer, self.filled[layer], keep))
        return saved

    def restore(self, saved: list, pos: int) -> None:
        for layer, filled, keep in saved:
            if keep is not None:
                n = keep[0].shape[1]
                self.k[layer, :, pos:pos + n], self.v[layer, :, pos:pos + n] = keep
            self.filled[layer] = filled


class Session:
    """One sequence on one model.  Thread-safe: calls on the same session serialize."""

    _ids = itertools.count(1)

    def __init__(self, model: Model, n_ctx: int, device: torch.device, precision: str = "exact"):
        cfg = model.config
        self.id = next(Session._ids)      # never reused within the process
        self.model = model
        self.n_ctx = n_ctx
        self.device = device
        self.precision = precision
        self.kv = KVCache(cfg.n_layer, cfg.n_head_kv, n_ctx, cfg.head_dim, device)
        self.lock = threading.RLock()
        self.closed = False
        self.tf = transformer_for(model, device, precision)

    @property
    def model_id(self) -> int:
        return self.model.id

    @property
    def n_tokens(self) -> int:
        """Positions valid in every layer: where the next decode starts."""
        return min(self.kv.filled)

    def __repr__(self):
        return (f"<Session {self.id} model={self.model.id:#x} tokens={self.n_tokens}/{self.n_ctx} "
                f"{self.precision}>")


class SessionTable:
    def __init__(self):
        self._lock = threading.Lock()
        self._live: dict[int, Session] = {}

    def create(self, model_id, n_ctx: int = 0, device=None, precision: str = "exact") -> Session:
        model = REGISTRY.get(model_id)
        if precision not in PRECISIONS:
            raise ArgumentError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 0:
            raise ArgumentError(f"n_ctx must be a non-negative integer, got {n_ctx!r}")
        n_ctx = n_ctx or min(DEFAULT_N_CTX, model.config.n_ctx_train)
        if n_ctx > model.config.n_ctx_train:
            raise RangeError(f"n_ctx {n_ctx} exceeds the model's context length {model.config.n_ctx_train}")
        s = Session(model, n_ctx, _device(device), precision)
        self._register(s)
        return s

    def _register(self, s: Session) -> None:
        with REGISTRY._lock:
            REGISTRY.get(s.model.id)             # removed meanwhile -> NotFoundError
            s.model.live_sessions += 1
        with self._lock:
            self._live[s.id] = s

    def get(self, session) -> Session:
        if isinstance(session, Session):
            if session.closed:
                raise NotFoundError(f"session {session.id} was freed")
            return session
        if isinstance(session, bool) or not isinstance(session, int):
            raise ArgumentError(f"session must be a Session or an integer id, got {session!r}")
        with self._lock:
            s = self._live.get(session)
        if s is None:
            raise NotFoundError(f"session {session} not found")
        return s

    def free(self, session) -> None:
        if session is None or session == 0:
            return                                  # freeing nothing is a no-op, as in C
        s = self.get(session)
        with s.lock:
            if s.closed:
                raise NotFoundError(f"session {s.id} was freed")
            s.closed = True
            with self._lock:
                self._live.pop(s.id, None)
            with REGISTRY._lock:
                s.model.live_sessions -= 1
            s.kv.graph = None                        # the captured step points back at the cache: break the cycle
            s.kv = None                              # release the cache now, not at GC time

    def fork(self, session) -> Session:
        s = self.get(session)
        with s.lock:
            child = Session(s.model, s.n_ctx, s.device, s.precision)
            n = max(s.kv.filled)
            child.kv.k[:, :, :n] = s.kv.k[:, :, :n]
            child.kv.v[:, :, :n] = s.kv.v[:, :, :n]
            child.kv.filled = list(s.kv.filled)
            self._register(child)
        return child


SESSIONS = SessionTable()


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ArgumentError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .errors import UnsupportedError
        raise UnsupportedError(f"device {device!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ArgumentError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return dev


# ---- argument checks shared by the primitives ------------------------------------------------

def _ids(s: Session, ids) -> torch.Tensor:   # -> [T] int64 on the session's device
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ArgumentError(f"ids must be a 1-D integer sequence, got tensor {tuple(ids.shape)} {ids.dtype}")
        t = ids.to(torch.int64)
    else:
        try:
            ids = list(ids)
        except TypeError:
            raise ArgumentError(f"ids must be a sequence of token ids, got {type(ids).__name__}") from None
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            bad = next(i for i in ids if not isinstance(i, int) or isinstance(i, bool))
            raise ArgumentError(f"ids must be integers, got {bad!r}")
        if any(not -(1 << 63) <= i < (1 << 63) for i in ids):
            bad = next(i for i in ids if not -(1 << 63) <= i < (1 << 63))
            raise RangeError(f"token id {bad} out of range [0, {s.model.config.n_vocab})")
        t = torch.tensor(ids, dtype=torch.int64)
    if t.numel() == 0:
        raise ArgumentError("ids is empty: at least one token is needed")
    V = s.model.config.n_vocab
    bad = t[(t < 0) | (t >= V)]
    if bad.numel():
        raise RangeError(f"token id {int(bad[0])} out of range [0, {V})")
    return t.to(s.device)


def _hidden(s: Session, hidden) -> torch.Tensor:   # -> [T, D] f32 on the session's device
    D = s.model.config.n_embd
    if not isinstance(hidden, torch.Tensor):
        try:
            hidden = torch.as_tensor(hidden, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise ArgumentError(f"hidden must be a [T, {D}] float tensor, got {type(hidden).__name__}") from None
    if hidden.dim() != 2 or hidden.shape[1] != D or hidden.shape[0] == 0:
        raise ArgumentError(f"hidden must have shape [T, {D}] with T >= 1, got {list(hidden.shape)}")
    if not hidden.dtype.is_floating_point:
        raise ArgumentError(f"hidden must be floating point, got {hidden.dtype}")
    if hidden.dtype is not torch.float32 or not hidden.is_cpu or s.device.type != "cpu":
        hidden = hidden.to(s.device, torch.float32)
    if not _all_finite(hidden):
        raise ArgumentError("hidden contains NaN or infinity")
    return hidden


def _all_finite(x: torch.Tensor) -> bool:
    """No NaN or infinity in x (float32).  A decode step's [1, D] is checked once per layer call,
    so cheaply: on the CPU, x · 0 is NaN exactly when some element is not finite (inf · 0 and
    NaN · 0 are NaN, a finite element adds ±0), one dispatched op instead of isfinite + all (~3x
    faster).  Verified once per process (_dot_check); else, or elsewhere, torch.isfinite."""
    n = x.numel()
    if x.is_cpu and not x.requires_grad and n <= _DOT_MAX and _dot_check():
        z = _ZEROS.get(n)
        if z is None:
            if len(_ZEROS) >= 16:
                _ZEROS.clear()
            z = _ZEROS[n] = torch.zeros(n)
        return math.isfinite(torch.dot(x.reshape(n), z))
    return bool(torch.isfinite(x).all())


_DOT_MAX = 1 << 16            # larger inputs (long prefill chunks): isfinite, negligible next to the compute
_ZEROS: dict[int, torch.Tensor] = {}
_DOT_OK: list[bool] = []


def _dot_check() -> bool:
    """Whether this torch's CPU dot propagates a non-finite element to its result (IEEE says it
    must; checked once rather than assumed)."""
    if not _DOT_OK:
        ok = True
        for n in (1, 5, 576, 4099, _DOT_MAX):
            z = torch.zeros(n)
            ok &= math.isfinite(torch.dot(torch.full((n,), 3e38), z))
            for bad in (math.inf, -math.inf, math.nan):
                for i in {0, n // 2, n - 1}:
                    v = torch.ones(n)
                    v[i] = bad
                    ok &= not math.isfinite(torch.dot(v, z))
        _DOT_OK.append(ok)
    return _DOT_OK[0]


def _check_span(s: Session, pos: int, T: int) -> None:
    if pos + T > s.n_ctx:
        raise RangeError(f"positions [{pos}, {pos + T}) exceed the session's n_ctx {s.n_ctx}")


# ---- the primitives (module-level names mirror the C ABI) -------------------------------------

def embed_tokens(session, ids) -> torch.Tensor:
    """ids: [T] -> hidden [T, D].  Reads no session state."""
    s = SESSIONS.get(session)
    return s.tf.embed(_ids(s, ids))


def forward_layer(session, layer: int, hidden, pos: int) -> torch.Tensor:
    """hidden [T, D] at positions [pos, pos+T) through layer `layer` -> [T, D].
    Writes that layer's K/V for [pos, pos+T) (dropping any later positions of that layer) and
    attends to [0, pos+T).  pos may not skip past what the layer has cached."""
    s = SESSIONS.get(session)
    L = s.model.config.n_layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < L:
        raise RangeError(f"layer {layer!r} out of range [0, {L})")
    if isinstance(pos, bool) or not isinstance(pos, int) or pos < 0:
        raise RangeError(f"pos must be a non-negative integer, got {pos!r}")
    x = _hidden(s, hidden)
    with s.lock:
        s = SESSIONS.get(s)
        if pos > s.kv.filled[layer]:
            raise RangeError(f"pos {pos} skips past the {s.kv.filled[layer]} positions cached for layer {layer}")
        _check_span(s, pos, x.shape[0])
        saved = s.kv.snapshot(pos, pos + x.shape[0], [layer])
        try:
            return s.tf.layer(layer, x, pos, s.kv)
        except BaseException:
            s.kv.restore(saved, pos)
            raise


def compute_logits(session, hidden) -> torch.Tensor:
    """hidden [T, D] -> logits [T, V] (final norm + output head).  Reads no session state."""
    s = SESSIONS.get(session)
    return s.tf.logits(_hidden(s, hidden))


def decode(session, ids, *, all_logits: bool = False) -> torch.Tensor:
    """Append ids [T] to the sequence through every layer without leaving the host.
    Returns logits [V] for the last token, or [T, V] with all_logits=True."""
    s = SESSIONS.get(session)
    ids = _ids(s, ids)
    with s.lock:
        s = SESSIONS.get(s)
        pos = s.n_tokens
        _check_span(s, pos, ids.shape[0])
        saved = s.kv.snapshot(pos, pos + ids.shape[0], range(s.model.config.n_layer))
        try:
            logits = s.tf.forward(ids, pos, s.kv, all_logits)
            return logits if all_logits else logits[0]
        except BaseException:
            s.kv.restore(saved, pos)
            raise


def session_reset(session) -> None:
    s = SESSIONS.get(session)
    with s.lock:
        SESSIONS.get(s).kv.truncate(0)


def session_truncate(session, n: int) -> None:
    """Keep the first n positions (n may not exceed what is cached)."""
    s = SESSIONS.get(session)
    with s.lock:
        s = SESSIONS.get(s)
        cached = max(s.kv.filled)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= cached:
            raise RangeError(f"n {n!r} out of range [0, {cached}] (the session's cached tokens)")
        s.kv.truncate(n)


