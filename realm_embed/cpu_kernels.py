"""CPU decode kernels: csrc/cpu_decode.c (built by setup.py as realm_embed/_cpu_decode.so), through
ctypes.

For one token (T = 1) on CPU, fast mode runs a whole llama block in one C call on the GGUF's own
quantized bytes (Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K / Q5_K / Q6_K, mixed freely within a block,
e.g. Q4_K_M's Q4_K with Q6_K attn_v / ffn_down, and Q5_0 where a width is not a multiple of 256), with int8-quantized activations and integer dot products
(AVX-512 VNNI, AVX2 or plain C, picked at load), on a small pthread pool sized by
torch.get_num_threads() (or THREADS), call by call.  The pool hands out work in chunks that any
thread may claim, so a worker a busy machine doesn't schedule doesn't hold decode up.  The KV
cache stays the session's torch tensors, so C decode steps and torch prefill mix freely.  Anything else (prefill, CUDA, other types, qwen2's biases or "neox"
RoPE, partial rotary, a K-quant matrix whose K is not a multiple of 256) stays on fast.py's torch path.

Switches: REALM_CPU_KERNELS=0 (or ENABLED = False at run time) turns the C path off;
REALM_CPU_VARIANT=scalar|avx2 caps the instruction set (set_variant forces one, for tests).
If the library is missing (no compiler at install time), `lib` is None and fast mode is torch.

Shapes: T tokens, D hidden, H/Hkv heads, Dh head dim, F feed-forward, N/K a weight's rows/columns.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as QT

ENABLED = os.environ.get("REALM_CPU_KERNELS", "1") != "0"
THREADS: int | None = None      # the C pool's thread count; None: torch.get_num_threads(), call by call
TYPES = (QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.Q6_K)
VARIANTS = ("scalar", "avx2", "avx512")
HEAD_MAX_T = 16                 # logits() for up to this many positions go through the C gemv
_ERRORS = {-1: "unsupported weight type", -2: "bad shape", -3: "out of memory", -4: "variant not supported"}

_f = ctypes.c_void_p


class Mat(ctypes.Structure):
    """rd_mat: one GGUF weight [N, K], rows of K/32 blocks."""
    _fields_ = [("data", ctypes.c_void_p), ("type", ctypes.c_int32), ("n", ctypes.c_int32),
                ("k", ctypes.c_int32), ("pad", ctypes.c_int32), ("row_bytes", ctypes.c_int64)]


class LayerW(ctypes.Structure):
    """rd_layer: one block's dimensions, norms and weights."""
    _fields_ = [("D", ctypes.c_int32), ("H", ctypes.c_int32), ("Hkv", ctypes.c_int32), ("Dh", ctypes.c_int32),
                ("F", ctypes.c_int32), ("pad", ctypes.c_int32), ("eps", ctypes.c_float), ("pad2", ctypes.c_float),
                ("attn_norm", ctypes.c_void_p), ("ffn_norm", ctypes.c_void_p)] + \
               [(n, Mat) for n in ("q", "k", "v", "o", "gate", "up", "down")]


def _load():
    path = Path(__file__).resolve().parent / "_cpu_decode.so"
    if not path.is_file():
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    P, I = ctypes.POINTER, ctypes.c_int
    lib.rd_variant.restype = I
    lib.rd_set_variant.argtypes, lib.rd_set_variant.restype = [I], I
    lib.rd_gemv.argtypes, lib.rd_gemv.restype = [P(Mat), _f, _f, I, I], I
    lib.rd_quantize.argtypes, lib.rd_quantize.restype = [_f, I, _f, _f, _f, _f], I
    lib.rd_head.argtypes, lib.rd_head.restype = [P(Mat), _f, _f, I, I, I], I
    lib.rd_layer_step.argtypes = [P(LayerW), _f, I, _f, _f, I, _f, _f, I]
    lib.rd_layer_step.restype = I
    return lib


lib = _load()


def available() -> bool:
    return lib is not None


def active() -> bool:
    return ENABLED and lib is not None


def variant() -> str:
    """The instruction set the kernels use now: "avx512" (VNNI), "avx2" or "scalar"."""
    return VARIANTS[lib.rd_variant()]


def set_variant(name: str | None) -> None:
    """Force a variant ("scalar" / "avx2" / "avx512"), or None for the best the CPU has."""
    if lib.rd_set_variant(-1 if name is None else VARIANTS.index(name)):
        raise RuntimeError(f"CPU kernel variant {name!r} is not supported on this CPU")


def pool_threads() -> int:
    """Threads a C call runs on: THREADS if set, else torch.get_num_threads() (read on every call)."""
    return THREADS or torch.get_num_threads()


def _check(err: int, what: str) -> None:
    if err:
        raise RuntimeError(f"{what}: {_ERRORS.get(err, err)}")


def mat(raw: torch.Tensor, qtype, shape) -> Mat:
    """A Mat over raw GGUF bytes (uint8, contiguous) of a [N, K] weight; the caller keeps raw alive."""
    N, K = shape
    return Mat(raw.data_ptr(), int(qtype), N, K, 0, raw.numel() // N)


def supported(model, name: str) -> bool:
    info = model.tensor_info(name)
    return info.ggml_type in TYPES and len(info.shape) == 2 and info.shape[1] % GGML_QUANT_SIZES[info.ggml_type][0] == 0


def gemv(m: Mat, x: torch.Tensor, threads: int | None = None) -> torch.Tensor:   # x [T, K] f32 -> [T, N]
    x = x.to(torch.float32).contiguous()
    y = torch.empty(x.shape[0], m.n, dtype=torch.float32)
    _check(lib.rd_gemv(ctypes.byref(m), x.data_ptr(), y.data_ptr(), x.shape[0],
                       threads or pool_threads()), "rd_gemv")
    return y


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [K] f32 -> the kernels' activation: q, l [K] int8 and u, s [K/32] f32, where each block
    of 32 is x ≈ u·(128·q + l), |x - that| ≤ u/2, and s = u·Σ(128·q + l)."""
    x = x.to(torch.float32).contiguous()
    K = x.numel()
    q, l = torch.empty(K, dtype=torch.int8), torch.empty(K, dtype=torch.int8)
    u, s = torch.empty(K // 32), torch.empty(K // 32)
    _check(lib.rd_quantize(x.data_ptr(), K, q.data_ptr(), l.data_ptr(), u.data_ptr(), s.data_ptr()), "rd_quantize")
    return q, l, u, s


class Decoder:
    """The C side of one FastTransformer (CPU): per-layer weight structs, built on first use.

    Holds the model (its mmapped bytes are what the structs point into) and the f32 norms."""

    def __init__(self, model, cfg, head_name: str):
        self.model, self.cfg = model, cfg
        ok = (cfg.n_rot == cfg.head_dim and cfg.arch != "qwen2" and not cfg.qkv_bias
              and cfg.n_head % cfg.n_head_kv == 0)
        self.ok = [ok and all(supported(model, f"blk.{i}.{n}.weight") for n in
                              ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"))
                   for i in range(cfg.n_layer)]
        self._layers: list[LayerW | None] = [None] * cfg.n_layer
        self._keep: list = []                          # norms the structs point into
        self.head = None
        if supported(model, head_name):
            info = model.tensor_info(head_name)
            self.head = mat(model.raw(head_name), info.ggml_type, info.shape)

    def _layer(self, i: int) -> LayerW:
        w = self._layers[i]
        if w is None:
            cfg, b, m = self.cfg, f"blk.{i}.", self.model
            norms = [m.dequantize(b + n).contiguous() for n in ("attn_norm.weight", "ffn_norm.weight")]
            self._keep.extend(norms)
            mats = [mat(m.raw(b + n + ".weight"), m.tensor_info(b + n + ".weight").ggml_type,
                        m.tensor_info(b + n + ".weight").shape)
                    for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]
            w = LayerW(cfg.n_embd, cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.n_ff, 0, cfg.rms_eps, 0.0,
                       norms[0].data_ptr(), norms[1].data_ptr(), *mats)
            self._layers[i] = w
        return w

    def can_step(self, i: int, kv) -> bool:
        k = kv.k
        return self.ok[i] and k.dtype == torch.float32 and k.device.type == "cpu" and k.is_contiguous() \
            and kv.v.is_contiguous() and kv.mask is None

    def step(self, i: int, x: torch.Tensor, pos: int, kv, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [1, D] f32 -> [1, D] (new); writes layer i's K/V at pos.  cos/sin: [Dh/2] rows at pos."""
        out = x.to(torch.float32, copy=True).contiguous()
        lk, lv = kv.layers[i]                                    # [Hkv, n_ctx, Dh] views, contiguous
        _check(lib.rd_layer_step(ctypes.byref(self._layer(i)), out.data_ptr(), pos, lk.data_ptr(), lv.data_ptr(),
                                 lk.shape[1], cos.data_ptr(), sin.data_ptr(), pool_threads()),
               f"layer {i}")
        kv.filled[i] = pos + 1                                  # as KVCache.update: later positions dropped
        return out

    def logits(self, h: torch.Tensor, refine: int) -> torch.Tensor:   # h [T, D] f32 (normed) -> [T, V]
        """The head's logits, each position's top `refine` recomputed in f32 (fast.Head's contract)."""
        h = h.to(torch.float32).contiguous()
        y = torch.empty(h.shape[0], self.head.n, dtype=torch.float32)
        _check(lib.rd_head(ctypes.byref(self.head), h.data_ptr(), y.data_ptr(), h.shape[0], refine,
                           pool_threads()), "rd_head")
        return y
