"""Dequantize GGML tensor types with torch, bit for bit equal to gguf-py's numpy reference.

Weights stay quantized host-side; this module turns one tensor's raw GGUF bytes into floats on
whatever device the bytes live on (CPU or CUDA).  ``gguf.quants.dequantize`` is the reference:
every function below mirrors its operation order and intermediate dtypes (float16 scales widened
to float32 first, then ``d * q`` or ``d * q + m`` as separate float32 roundings, never fused), so
the float32 results are identical, not merely close.  tests/test_quant.py checks every type.

Layout: a tensor of ``shape`` (numpy order, last dim contiguous) is ``nb`` blocks of
``type_size`` bytes, each decoding to ``block_size`` values; every block function takes
``blocks: [nb, type_size] uint8`` and returns ``[nb, block_size] float32``, vectorized over
blocks (no Python loop over blocks).  The IQ (grid codebook) types live in quant_iq.py.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

from .errors import ArgumentError, UnsupportedError

BlockFn = Callable[[torch.Tensor], torch.Tensor]

# ----------------------------------------------------------------------------- helpers


def _view(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret uint8 ``x: [..., k]`` as ``dtype`` along the last dim.

    A dtype view needs contiguous bytes at an offset aligned to the new item size; a slice of a
    block (or a caller's tensor sliced at an odd byte) is neither, so it is copied first.
    """
    if not x.is_contiguous() or x.storage_offset() % dtype.itemsize:
        x = x.clone(memory_format=torch.contiguous_format)
    return x.view(dtype)


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 field at byte ``start`` of every block, widened to float32: [nb, 1]."""
    return _view(blocks[:, start:start + 2], torch.float16).to(torch.float32)


def _u16(blocks: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """``count`` little-endian uint16 fields from byte ``start``, as int32: [nb, count]."""
    b = blocks[:, start:start + 2 * count].to(torch.int32).view(-1, count, 2)
    return b[..., 0] | (b[..., 1] << 8)


def _u32(blocks: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """``count`` little-endian uint32 fields from byte ``start``, as int64: [nb, count]."""
    # int64, not int32: ``>> 28`` on the top nibble must not sign-extend.
    b = blocks[:, start:start + 4 * count].to(torch.int64).view(-1, count, 4)
    return b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)


def _bits(x: torch.Tensor, group: int, width: int) -> torch.Tensor:
    """Unpack ``width``-bit fields of uint8 ``x: [nb, n]`` into ``[nb, n * 8 // width]``.

    ggml packs by runs of ``group`` bytes: a run yields first the lowest field of each of its
    bytes, then the next field of each byte, and so on (``group=1`` is plain bit order within
    each byte).  This is gguf-py's ``reshape((nb, -1, 1, group)) >> shifts`` idiom.
    """
    nb = x.shape[0]
    shifts = torch.arange(0, 8, width, dtype=torch.uint8, device=x.device).view(1, 1, -1, 1)
    # contiguous first: elementwise ops over short strided rows (a slice of each block) are
    # several times slower than one copy followed by contiguous ops.
    x = x.contiguous().view(nb, -1, 1, group)
    return ((x >> shifts) & ((1 << width) - 1)).view(nb, -1)


def _nibbles(x: torch.Tensor, group: int) -> torch.Tensor:
    """4-bit fields of ``x: [nb, n]`` → ``[nb, 2n]`` (per run of ``group`` bytes: lows, highs)."""
    nb = x.shape[0]
    x = x.contiguous().view(nb, -1, 1, group)            # see _bits on contiguous()
    # two uint8 passes and a cat beat a broadcast shift plus a mask on this hot path
    return torch.cat((x & 0x0F, x >> 4), dim=2).view(nb, -1)


def _scaled(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``d * q`` in float32, shaped like ``q`` (``d`` broadcasts), as a new tensor.

    Widening ``q`` first and multiplying in place gives the same float32 products as numpy's
    ``d * q.astype(float32)``; torch's mixed-dtype multiply (int * float) is ~10× slower.
    """
    return q.to(torch.float32).mul_(d)


_small_tables: dict[tuple[str, torch.device], torch.Tensor] = {}


def _table(name: str, values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant table, converted to torch once per device."""
    key = (name, device)
    t = _small_tables.get(key)
    if t is None:
        t = _small_tables[key] = torch.tensor(values, dtype=dtype, device=device)
    return t


# ----------------------------------------------------------------------------- plain floats
# One "block" is one element; these return [n, 1].


def _f32(blocks: torch.Tensor) -> torch.Tensor:
    return _view(blocks, torch.float32).clone()          # a new tensor, never an alias of raw


def _f16_elems(blocks: torch.Tensor) -> torch.Tensor:
    # Equal to numpy for every value but signalling NaNs: torch's (hardware) widening sets
    # their quiet bit, numpy keeps the payload as is.  NaN stays NaN; fixing that costs a pass.
    return _view(blocks, torch.float16).to(torch.float32)


def _bf16(blocks: torch.Tensor) -> torch.Tensor:
    # gguf-py shifts the 16 bits into the top of an int32; doing the same keeps NaN payloads.
    return (_view(blocks, torch.int16).to(torch.int32) << 16).view(torch.float32)


# ----------------------------------------------------------------------------- legacy 32-blocks


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks, 0)                                   # d: [nb, 1]
    q = _nibbles(blocks[:, 2:18], 16).to(torch.int8) - 8  # q: [nb, 32] int8 in [-8, 7]
    return _scaled(q, d)


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _f16(blocks, 0), _f16(blocks, 2)               # d, m: [nb, 1]
    q = _nibbles(blocks[:, 4:20], 16)                     # q: [nb, 32] uint8 in [0, 15]
    return _scaled(q, d).add_(m)                          # (d * q) + m: two float32 roundings


def _q5_bits(blocks: torch.Tensor, qh_at: int) -> torch.Tensor:
    """5-bit values of a Q5_0/Q5_1 block: low nibbles | (bit i of the uint32 qh) << 4."""
    qh = _bits(blocks[:, qh_at:qh_at + 4], 1, 1)          # qh: [nb, 32] (bit i of the uint32)
    ql = _nibbles(blocks[:, qh_at + 4:qh_at + 20], 16)    # ql: [nb, 32]
    return ql | (qh << 4)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks, 0)
    q = _q5_bits(blocks, 2).to(torch.int8) - 16           # q: [nb, 32] int8 in [-16, 15]
    return _scaled(q, d)


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    return _scaled(_q5_bits(blocks, 4), d).add_(m)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks, 0)                                   # d: [nb, 1]
    return _scaled(blocks[:, 2:34].view(torch.int8), d)   # qs: [nb, 32] int8


# ------------------------------------------------------------------------- k-quants (256-blocks)


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    # scales[16] | qs[64] | d | dmin
    nb = blocks.shape[0]
    sc = blocks[:, 0:16]                                  # sc: [nb, 16], low nibble scale, high min
    d, dmin = _f16(blocks, 80), _f16(blocks, 82)
    dl = _scaled(sc & 0x0F, d).view(nb, 16, 1)
    ml = _scaled(sc >> 4, dmin).view(nb, 16, 1)
    q = _bits(blocks[:, 16:80], 32, 2).view(nb, 16, 16)   # q: [nb, 16 sub-blocks, 16]
    return _scaled(q, dl).sub_(ml).view(nb, 256)


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    # hmask[32] | qs[64] | scales[12] | d
    nb = blocks.shape[0]
    d = _f16(blocks, 108)
    # 16 six-bit scales: low nibbles in bytes 0-7, high 2 bits in bytes 8-11
    lo = _bits(blocks[:, 96:104], 8, 4)                   # lo: [nb, 16]
    hi = _bits(blocks[:, 104:108], 4, 2)                  # hi: [nb, 16]
    sc = (lo | (hi << 4)).to(torch.int8) - 32
    dl = _scaled(sc, d).view(nb, 16, 1)
    ql = _bits(blocks[:, 32:96], 32, 2).view(nb, 16, 16)
    qh = _bits(blocks[:, 0:32], 32, 1).view(nb, 16, 16)
    # a *clear* hmask bit subtracts 4 (ggml stores the offset inverted)
    q = ql.to(torch.int8) - ((qh ^ 1) << 2).to(torch.int8)
    return _scaled(q, dl).view(nb, 256)


def _k_scale_min(sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack Q4_K/Q5_K's 12 scale bytes into 8 six-bit scales and 8 six-bit mins: [nb, 8] each."""
    s = sc.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]                  # each [nb, 4]
    scale = torch.cat((d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)), dim=-1)
    mins = torch.cat((m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)), dim=-1)
    return scale, mins


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    # d | dmin | scales[12] | qs[128]
    nb = blocks.shape[0]
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = _k_scale_min(blocks[:, 4:16])
    dl = _scaled(sc, d).view(nb, 8, 1)
    ml = _scaled(mn, dmin).view(nb, 8, 1)
    q = _nibbles(blocks[:, 16:144], 32).view(nb, 8, 32)
    return _scaled(q, dl).sub_(ml).view(nb, 256)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    # d | dmin | scales[12] | qh[32] | qs[128]
    nb = blocks.shape[0]
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = _k_scale_min(blocks[:, 4:16])
    dl = _scaled(sc, d).view(nb, 8, 1)
    ml = _scaled(mn, dmin).view(nb, 8, 1)
    ql = _nibbles(blocks[:, 48:176], 32).view(nb, 8, 32)
    qh = _bits(blocks[:, 16:48], 32, 1).view(nb, 8, 32)
    return _scaled(ql | (qh << 4), dl).sub_(ml).view(nb, 256)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    # ql[128] | qh[64] | scales[16] int8 | d
    nb = blocks.shape[0]
    d = _f16(blocks, 208)
    sc = blocks[:, 192:208].view(torch.int8)
    dl = _scaled(sc, d).view(nb, 16, 1)
    ql = _nibbles(blocks[:, 0:128], 64).view(nb, 8, 32)
    qh = _bits(blocks[:, 128:192], 32, 2).view(nb, 8, 32)
    q = ((ql | (qh << 4)).to(torch.int8) - 32).view(nb, 16, 16)
    return _scaled(q, dl).view(nb, 256)


# ----------------------------------------------------------------------------- ternary and fp4


def _tq1_0(blocks: torch.Tensor) -> torch.Tensor:
    # qs[48] | qh[4] | d: base-3 digits stored as fixed-point fractions of 256
    nb = blocks.shape[0]
    d = _f16(blocks, 52)
    pow3 = _table("pow3", [1, 3, 9, 27, 81], torch.uint8, blocks.device).view(1, 1, 5, 1)
    # uint8 products wrap mod 256 on purpose: that shifts digit k to the top of the byte
    q0 = (blocks[:, 0:32].reshape(nb, 1, 1, 32) * pow3).view(nb, -1)           # [nb, 160]
    q1 = (blocks[:, 32:48].reshape(nb, 1, 1, 16) * pow3).view(nb, -1)          # [nb, 80]
    qh = (blocks[:, 48:52].reshape(nb, 1, 1, 4) * pow3[:, :, :4]).view(nb, -1)  # [nb, 16]
    q = torch.cat((q0, q1, qh), dim=-1).to(torch.int32)
    q = ((q * 3) >> 8).to(torch.int8) - 1                # digit in {-1, 0, 1}
    return _scaled(q, d)


def _tq2_0(blocks: torch.Tensor) -> torch.Tensor:
    # qs[64] | d
    d = _f16(blocks, 64)
    q = _bits(blocks[:, 0:64], 32, 2).to(torch.int8) - 1
    return _scaled(q, d)


# e2m1 values, doubled (the block scale carries the 1/2), as in gguf-py and ggml
_FP4_DOUBLED = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)


def _mxfp4(blocks: torch.Tensor) -> torch.Tensor:
    # e (e8m0 exponent) | qs[16]
    nb = blocks.shape[0]
    e = blocks[:, 0:1].to(torch.int32)                    # e: [nb, 1]
    # ggml_e8m0_to_fp32_half: 2^(e-127) / 2 as raw float32 bits (e < 2 lands in subnormals)
    bits = torch.where(e < 2, 0x00200000 << e, (e - 1) << 23)
    d = bits.view(torch.float32)
    kv = _table("fp4", _FP4_DOUBLED, torch.float32, blocks.device)
    q = kv[_bits(blocks[:, 1:17], 16, 4).long()]          # q: [nb, 32]
    return (d * q).view(nb, 32)


def _ue4m3_half(x: torch.Tensor) -> torch.Tensor:
    """Unsigned e4m3 (bias 7) scale bytes → float32, halved; 0 and 0x7F decode to 0."""
    exp = (x.to(torch.int32) >> 3) & 0x0F
    man = (x & 0x07).to(torch.int32)
    # normal values built from their float32 bits: exact, like gguf-py's float arithmetic
    normal = (((exp + 120) << 23) | (man << 20)).view(torch.float32)
    sub = man.to(torch.float32) * 2.0 ** -9
    val = torch.where(exp == 0, sub, normal) * 0.5
    return torch.where((x == 0) | (x == 0x7F), torch.zeros_like(val), val)


def _nvfp4(blocks: torch.Tensor) -> torch.Tensor:
    # d[4] (ue4m3, one per 16 values) | qs[32]
    nb = blocks.shape[0]
    d = _ue4m3_half(blocks[:, 0:4]).view(nb, 4, 1)
    qs = blocks[:, 4:36].reshape(nb, 4, 8)
    idx = torch.cat((qs & 0x0F, qs >> 4), dim=-1)         # idx: [nb, 4, 16]
    kv = _table("fp4", _FP4_DOUBLED, torch.float32, blocks.device)
    return (d * kv[idx.long()]).view(nb, 64)


# ----------------------------------------------------------------------------- dispatch

_BLOCK_FNS: dict[T, BlockFn] = {
    T.F32: _f32,
    T.F16: _f16_elems,
    T.BF16: _bf16,
    T.Q4_0: _q4_0,
    T.Q4_1: _q4_1,
    T.Q5_0: _q5_0,
    T.Q5_1: _q5_1,
    T.Q8_0: _q8_0,
    T.Q2_K: _q2_k,
    T.Q3_K: _q3_k,
    T.Q4_K: _q4_k,
    T.Q5_K: _q5_k,
    T.Q6_K: _q6_k,
    T.TQ1_0: _tq1_0,
    T.TQ2_0: _tq2_0,
    T.MXFP4: _mxfp4,
    T.NVFP4: _nvfp4,
}

# The IQ types' functions live in quant_iq.py, which imports the helpers above; it is loaded on
# first use so that importing either module first works (no import cycle at load time).
_IQ_TYPES = frozenset({T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M,
                       T.IQ4_NL, T.IQ4_XS})


def _block_fn(qtype: T) -> BlockFn:
    fn = _BLOCK_FNS.get(qtype)
    if fn is None:
        from .quant_iq import IQ_BLOCK_FNS
        fn = IQ_BLOCK_FNS[qtype]
    return fn


# Exactly the types gguf.quants.dequantize handles.  Not here because gguf-py cannot dequantize
# them either (so there is no reference to match): Q8_1, Q8_K (ggml's internal dot-product
# types, never stored in model files), Q1_0, and the integer/F64 types I8..I64, F64.
SUPPORTED_TYPES: frozenset[T] = frozenset(_BLOCK_FNS) | _IQ_TYPES


def _qtype(qtype) -> T:
    try:
        qtype = T(qtype)
    except ValueError:
        raise UnsupportedError(f"unknown GGML tensor type {qtype!r}") from None
    if qtype not in SUPPORTED_TYPES:
        raise UnsupportedError(f"tensor type {qtype.name} ({int(qtype)}) cannot be dequantized")
    return qtype


def type_nbytes(qtype, n_elements: int) -> int:
    """Bytes that ``n_elements`` values of ``qtype`` occupy (a whole number of blocks)."""
    qtype = _qtype(qtype)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if n_elements < 0 or n_elements % block_size:
        raise ArgumentError(
            f"n_elements={n_elements} is not a non-negative multiple of the {qtype.name} "
            f"block size {block_size}")
    return n_elements // block_size * type_size


def dequantize(raw: torch.Tensor, qtype, shape: tuple[int, ...], *,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode a tensor's raw GGUF bytes into a new float tensor of ``shape`` on raw's device.

    raw:   uint8, exactly ``type_nbytes(qtype, prod(shape))`` bytes, any shape (flattened)
    shape: numpy order (last dim = contiguous row; a multiple of the type's block size)
    Returns float32 bit-identical to gguf.quants.dequantize, then cast to ``dtype`` if asked.
    """
    qtype = _qtype(qtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArgumentError(f"dtype must be a floating torch dtype, got {dtype!r}")
    if not isinstance(raw, torch.Tensor) or raw.dtype != torch.uint8:
        got = raw.dtype if isinstance(raw, torch.Tensor) else type(raw).__name__
        raise ArgumentError(f"raw must be a uint8 torch.Tensor, got {got}")
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ArgumentError(f"shape {shape} has a negative dimension")
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    row = shape[-1] if shape else 1
    if row % block_size:
        raise ArgumentError(
            f"row length {row} of shape {shape} is not a multiple of the {qtype.name} "
            f"block size {block_size}")
    n = math.prod(shape)
    expected = n // block_size * type_size
    if raw.numel() != expected:
        raise ArgumentError(
            f"raw holds {raw.numel()} bytes but {qtype.name} shape {shape} needs {expected}")

    if n == 0:                                            # nothing to decode (and -1 dims
        return torch.empty(shape, dtype=dtype, device=raw.device)  # are ambiguous at 0)
    blocks = raw.reshape(-1, type_size)                   # blocks: [nb, type_size] uint8
    out = _block_fn(qtype)(blocks).view(shape)           # [nb, block_size] float32 → shape
    return out if dtype == torch.float32 else out.to(dtype)
