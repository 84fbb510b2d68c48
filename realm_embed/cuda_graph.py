"""Fast-mode decode on CUDA: one session's one-token step, captured once as a CUDA graph and
replayed for every token after.

A SmolLM2-sized step is several hundred small kernels.  Launched one by one from Python, the
launches cost far more than the arithmetic (transformers eager decodes such a model at ~56 tok/s
on the H100/H200 here); replayed from a graph, the step is a single launch.  What a graph needs
that the eager path does not:

  * static inputs: the token id and its position live in device tensors that the graph reads,
    so the position is data, not a Python int baked into the capture;
  * a static KV cache: K/V are written with index_copy_ at the position tensor, and attention
    reads every cached position under a mask (position <= pos).  The cache is zero-filled on
    CUDA (session.KVCache), so masked positions hold finite values;
  * fixed tables and weights: the rotation table is grown to the cache's capacity before capture, and the step
    holds every weight it read (the shared LRU cache may drop its entries; the graph's pointers
    must stay valid as long as the session lives).

Each session captures its own graph (its cache is its own memory), on its first one-token
decode.  Everything else (prefill, forward_layer, exact mode) stays eager.  REALM_CUDA_COMPILE=1
also runs the step through torch.compile before capture (below).  REALM_CUDA_GRAPHS=0
turns graphs off (decode takes the eager path).  A failed capture is reported once as a warning;
that session then runs the same static step eagerly, and new sessions on that device take the
eager path.

Shapes: V vocab, D hidden, capacity the cache's positions (n_ctx rounded up to 16).
"""
from __future__ import annotations

import os
import threading
import warnings

import torch

_broken: set[str] = set()          # devices where a capture failed: eager steps from then on
_lock = threading.Lock()


def enabled(device: torch.device) -> bool:
    return (device.type == "cuda" and os.environ.get("REALM_CUDA_GRAPHS", "1") != "0"
            and str(device) not in _broken)


class StepKV:
    """The KV view a static step passes to FastTransformer.layer: writes at the position tensor,
    returns the whole cache with a mask instead of a slice (slicing would need a host int)."""

    def __init__(self, kv, pos: torch.Tensor, mask: torch.Tensor):
        self.kv, self.pos, self.mask = kv, pos, mask      # pos: [1] int64, mask: [capacity] f32, additive

    def update(self, layer: int, _pos, k: torch.Tensor, v: torch.Tensor):   # k, v: [Hkv, 1, Dh]
        lk, lv = self.kv.layers[layer]                                    # [Hkv, capacity, Dh]
        lk.index_copy_(1, self.pos, k)
        lv.index_copy_(1, self.pos, v)
        return lk, lv


class GraphStep:
    """One session's decode step for a single token: ids [1] at `pos` -> logits [1, V]."""

    def __init__(self, tf, kv, capture: bool):
        dev, capacity = tf.device, kv.k.shape[2]              # >= the session's n_ctx
        self.tf, self.kv, self.capture = tf, kv, capture
        self.rot = tf.rotation(0, capacity)                   # [capacity, 1, Dh/2], held
        self.blocks = [tf.block(i) for i in range(tf.cfg.n_layer)]
        self.head = tf.head()
        self.ids = torch.zeros(1, dtype=torch.int64, device=dev)
        self.pos = torch.zeros(1, dtype=torch.int64, device=dev)
        self.positions = torch.arange(capacity, device=dev)
        self.graph = self.out = None
        n = max(kv.filled)                                    # masked positions must be finite
        kv.k[:, :, n:].zero_()
        kv.v[:, :, n:].zero_()

    def _step(self) -> torch.Tensor:                          # -> [1, V]
        tf = self.tf
        mask = torch.where(self.positions <= self.pos, 0.0, float("-inf"))   # [capacity], once per step
        kv = StepKV(self.kv, self.pos, mask)
        rot = self.rot.index_select(0, self.pos)              # [1, 1, Dh/2]
        x = tf.embed(self.ids)                                # [1, D]
        for i, w in enumerate(self.blocks):
            x = tf.layer(i, x, 0, kv, w, rot)
        return tf.logits(x, self.head)

    def _capture(self) -> None:
        dev = self.tf.device
        step = compiled_step() if compile_enabled() else GraphStep._step
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):                         # warm-up: lazy init (and compiling) stays out of the graph
            try:
                step(self)
            except Exception as e:                            # noqa: BLE001  the plain step still works
                if step is GraphStep._step:
                    raise
                _compile_failed(e)
                step = GraphStep._step
                step(self)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = step(self)
        self.graph, self.out = graph, out

    def __call__(self, ids: torch.Tensor, pos: int) -> torch.Tensor:   # ids: [1] on the device
        self.ids.copy_(ids)
        self.pos.fill_(pos)
        if self.capture and self.graph is None:
            try:
                with torch.cuda.device(self.tf.device):
                    self._capture()
            except Exception as e:                            # noqa: BLE001  eager still works
                with _lock:
                    _broken.add(str(self.tf.device))
                warnings.warn(f"realm: CUDA graph capture failed on {self.tf.device}, decoding eagerly: "
                              f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=3)
                self.capture = False
        if self.graph is not None:
            self.graph.replay()
            logits = self.out.clone()                         # the next replay overwrites out
        else:
            logits = self._step()
        self.kv.filled = [pos + 1] * len(self.kv.filled)
        return logits


# ---- optional torch.compile of the step (REALM_CUDA_COMPILE=1) ---------------------------------
# Inductor fuses the step's elementwise work (norms, casts, RoPE, SiLU, residuals) into fewer
# kernels: fewer nodes in the graph.  It costs a compile per process (tens of seconds) on the
# first session, so it is opt-in.  One compiled function serves every session: its guards are on
# tensor shapes (the cache's capacity), not on the session object.

_compiled = None
_compile_broken = False


def compile_enabled() -> bool:
    return os.environ.get("REALM_CUDA_COMPILE", "0") == "1" and not _compile_broken


def compiled_step():
    global _compiled
    with _lock:
        if _compiled is None:
            _compiled = torch.compile(GraphStep._step, fullgraph=True, dynamic=False)
        return _compiled


def _compile_failed(e: Exception) -> None:
    global _compile_broken
    _compile_broken = True
    warnings.warn(f"realm: torch.compile of the decode step failed, capturing it uncompiled: "
                  f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=4)


def step_for(tf, kv) -> GraphStep:
    """The session's step (kv is its cache), made on first use."""
    if kv.graph is None or kv.graph.tf is not tf:
        kv.graph = GraphStep(tf, kv, capture=True)
    return kv.graph
