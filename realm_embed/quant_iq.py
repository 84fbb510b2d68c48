"""The IQ ("i-quant", codebook) types for quant.py, bit for bit equal to gguf-py.

Most IQ types store, per group of 8 (or 4) values, an index into a fixed grid of small values
plus sign bits; the grids are gguf-py's own (``gguf.quants.<TYPE>.grid``, decoded from its hex
tables), converted to torch once per device rather than copied here.  Each function takes
``blocks: [nb, type_size] uint8`` and returns ``[nb, 256 or 32] float32``, computed in the same
order as gguf-py (``d * (0.5 + s) * 0.25``, then ``db * grid * signs``) so roundings agree.
"""

from __future__ import annotations

import gguf.quants as gq
import numpy as np
import torch
from gguf.constants import GGMLQuantizationType as T

from .quant import BlockFn, _bits, _f16, _nibbles, _scaled, _table, _u16, _u32

_device_tables: dict[tuple[str, torch.device], torch.Tensor] = {}


def _grid(cls, device: torch.device) -> torch.Tensor:
    """gguf-py's decoded grid for quant class ``cls`` as float32 ``[n_entries, width]``."""
    key = (cls.__name__, device)
    g = _device_tables.get(key)
    if g is None:
        cls.init_grid()
        g = torch.from_numpy(np.ascontiguousarray(cls.grid).reshape(cls.grid_shape))
        g = _device_tables[key] = g.to(device=device, dtype=torch.float32)
    return g


def _byte_signs(device: torch.device) -> torch.Tensor:
    """[256, 8] float32: entry [b, j] is -1 where bit j of byte b is set, else +1."""
    key = ("byte_signs", device)
    t = _device_tables.get(key)
    if t is None:
        b = torch.arange(256, dtype=torch.int32).view(256, 1) >> torch.arange(8, dtype=torch.int32)
        t = _device_tables[key] = torch.where((b & 1) == 0, 1.0, -1.0).to(device)
    return t


def _ksigns(device: torch.device) -> torch.Tensor:
    """[128, 8] float32 ±1: the 7-bit sign codes of IQ2_XXS/IQ2_XS/IQ3_XXS (8th = parity)."""
    key = ("ksigns", device)
    t = _device_tables.get(key)
    if t is None:
        codes = torch.frombuffer(bytearray(gq.IQ2_XXS.ksigns), dtype=torch.uint8).long()
        t = _device_tables[key] = _byte_signs(device)[codes.to(device)]
    return t


def _lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``table[idx]`` with any integer ``idx``: [*idx.shape, table.shape[1]]."""
    return table[idx.long()]


def _shifts7(device: torch.device) -> torch.Tensor:
    """Shifts that pick the four 7-bit sign codes out of an IQ2_XXS/IQ3_XXS aux word."""
    return _table("shifts7", [0, 7, 14, 21], torch.int64, device)


def _db_quarter(d: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """IQ2 sub-block scale, in gguf-py's order: ``(d * (0.5 + s)) * 0.25``."""
    return d * (s.to(torch.float32) + 0.5) * 0.25


# ----------------------------------------------------------------------------- IQ2


def _iq2_xxs(blocks: torch.Tensor) -> torch.Tensor:
    # d | 8 × (4 grid-index bytes, uint32 aux = 4 × 7-bit sign codes | 4-bit scale << 28)
    nb = blocks.shape[0]
    d = _f16(blocks, 0)
    qs = blocks[:, 2:66].reshape(nb, 8, 8)                # qs: [nb, 8 sub-blocks, 8 bytes]
    aux = _u32(qs[:, :, 4:8].reshape(nb, 32), 0, 8)       # aux: [nb, 8]
    db = _db_quarter(d, aux >> 28).view(nb, 8, 1, 1)
    codes = (aux.view(nb, 8, 1) >> _shifts7(blocks.device)) & 0x7F   # [nb, 8, 4]
    signs = _lookup(_ksigns(blocks.device), codes)        # signs: [nb, 8, 4, 8]
    grid = _lookup(_grid(gq.IQ2_XXS, blocks.device), qs[:, :, 0:4])  # grid: [nb, 8, 4, 8]
    return (db * grid * signs).view(nb, 256)


def _iq2_xs(blocks: torch.Tensor) -> torch.Tensor:
    # d | qs[32] uint16 (9-bit grid index | 7-bit sign code << 9) | scales[8] (two 4-bit each)
    nb = blocks.shape[0]
    d = _f16(blocks, 0)
    qs = _u16(blocks, 2, 32)                              # qs: [nb, 32]
    sc = _bits(blocks[:, 66:74], 1, 4)                    # sc: [nb, 16]
    db = _db_quarter(d, sc).view(nb, 16, 1, 1)
    signs = _lookup(_ksigns(blocks.device), qs >> 9).view(nb, 16, 2, 8)
    grid = _lookup(_grid(gq.IQ2_XS, blocks.device), qs & 511).view(nb, 16, 2, 8)
    return (db * grid * signs).view(nb, 256)


def _iq2_s(blocks: torch.Tensor) -> torch.Tensor:
    # d | qs[32] (grid index low 8 bits) | signs[32] | qh[8] (2 high index bits each) | scales[8]
    nb = blocks.shape[0]
    d = _f16(blocks, 0)
    sc = _bits(blocks[:, 74:82], 1, 4)                    # sc: [nb, 16]
    db = _db_quarter(d, sc).view(nb, 16, 1, 1)
    signs = _lookup(_byte_signs(blocks.device), blocks[:, 34:66]).view(nb, 16, 2, 8)
    qh = _bits(blocks[:, 66:74], 1, 2).to(torch.int32)   # qh: [nb, 32]
    idx = blocks[:, 2:34].to(torch.int32) | (qh << 8)
    grid = _lookup(_grid(gq.IQ2_S, blocks.device), idx).view(nb, 16, 2, 8)
    return (db * grid * signs).view(nb, 256)


# ----------------------------------------------------------------------------- IQ3


def _iq3_xxs(blocks: torch.Tensor) -> torch.Tensor:
    # d | qs[64] (grid index per 4 values) | 8 × uint32 (4 × 7-bit sign codes | scale << 28)
    nb = blocks.shape[0]
    d = _f16(blocks, 0)
    aux = _u32(blocks, 66, 8)                             # aux: [nb, 8]
    db = (d * ((aux >> 28).to(torch.float32) + 0.5) * 0.5).view(nb, 8, 1, 1)
    codes = (aux.view(nb, 8, 1) >> _shifts7(blocks.device)) & 0x7F
    signs = _lookup(_ksigns(blocks.device), codes)        # signs: [nb, 8, 4, 8]
    grid = _lookup(_grid(gq.IQ3_XXS, blocks.device), blocks[:, 2:66])  # [nb, 64, 4]
    return (db * grid.view(nb, 8, 4, 8) * signs).view(nb, 256)


def _iq3_s(blocks: torch.Tensor) -> torch.Tensor:
    # d | qs[64] | qh[8] (9th index bit) | signs[32] | scales[4] (two 4-bit each)
    nb = blocks.shape[0]
    d = _f16(blocks, 0)
    sc = _bits(blocks[:, 106:110], 1, 4)                  # sc: [nb, 8]
    db = _scaled(1 + 2 * sc, d).view(nb, 8, 1, 1)        # d * odd integer
    signs = _lookup(_byte_signs(blocks.device), blocks[:, 74:106]).view(nb, 8, 4, 8)
    qh = _bits(blocks[:, 66:74], 1, 1).to(torch.int32)   # qh: [nb, 64]
    idx = blocks[:, 2:66].to(torch.int32) | (qh << 8)
    grid = _lookup(_grid(gq.IQ3_S, blocks.device), idx).view(nb, 8, 4, 8)
    return (db * grid * signs).view(nb, 256)


# ----------------------------------------------------------------------------- IQ1

_IQ1_DELTA = 0.125


def _iq1_s(blocks: torch.Tensor) -> torch.Tensor:
    # d | qs[32] (index low 8 bits) | qh[8] uint16 (4 × 3 index bits | 3-bit scale | delta sign)
    nb = blocks.shape[0]
    d = _f16(blocks, 0)
    qh = _u16(blocks, 34, 8)                              # qh: [nb, 8]
    dl = _scaled(2 * ((qh >> 12) & 7) + 1, d).view(nb, 8, 1, 1)
    delta = torch.where((qh & 0x8000) == 0, _IQ1_DELTA, -_IQ1_DELTA).view(nb, 8, 1, 1)
    hi = (qh.view(nb, 8, 1) >> _table("shifts3", [0, 3, 6, 9], torch.int32, blocks.device)) & 7
    idx = blocks[:, 2:34].to(torch.int32) | (hi.view(nb, 32) << 8)
    grid = _lookup(_grid(gq.IQ1_S, blocks.device), idx).view(nb, 8, 4, 8)
    return (dl * (grid + delta)).view(nb, 256)


def _iq1_m(blocks: torch.Tensor) -> torch.Tensor:
    # qs[32] | qh[16] (two nibbles: 3 index bits | delta sign) | scales[4] uint16
    # (4 × 3-bit scales each, and the top nibbles of the four together form the f16 d)
    nb = blocks.shape[0]
    sc = _u16(blocks, 48, 4)                              # sc: [nb, 4]
    top = sc & 0xF000
    dbits = (top[:, 0] >> 12) | (top[:, 1] >> 8) | (top[:, 2] >> 4) | top[:, 3]
    dbits = dbits - ((dbits >> 15) << 16)                # into int16 range before the cast
    d = dbits.to(torch.int16).view(torch.float16).to(torch.float32).view(nb, 1)
    s = (sc.view(nb, 4, 1) >> _table("shifts3", [0, 3, 6, 9], torch.int32, blocks.device)) & 7
    dl = _scaled(2 * s.view(nb, 16) + 1, d).view(nb, 8, 2, 1, 1)
    qh = _nibbles(blocks[:, 32:48], 1).to(torch.int32)   # qh: [nb, 32] (low, high per byte)
    idx = blocks[:, 0:32].to(torch.int32) | ((qh & 7) << 8)
    delta = torch.where((qh & 8) == 0, _IQ1_DELTA, -_IQ1_DELTA).view(nb, 8, 2, 2, 1)
    grid = _lookup(_grid(gq.IQ1_M, blocks.device), idx).view(nb, 8, 2, 2, 8)
    return (dl * (grid + delta)).view(nb, 256)


# ----------------------------------------------------------------------------- IQ4 (non-linear)


def _iq4_values(device: torch.device) -> torch.Tensor:
    return _table("iq4nl", gq.IQ4_NL.kvalues, torch.float32, device)


def _iq4_nl(blocks: torch.Tensor) -> torch.Tensor:
    # d | qs[16]
    d = _f16(blocks, 0)
    return d * _lookup(_iq4_values(blocks.device), _nibbles(blocks[:, 2:18], 16))


def _iq4_xs(blocks: torch.Tensor) -> torch.Tensor:
    # d | scales_h uint16 (8 × 2 bits) | scales_l[4] (8 × 4 bits) | qs[128]
    nb = blocks.shape[0]
    d = _f16(blocks, 0)
    hi = _bits(blocks[:, 2:4], 1, 2)                      # hi: [nb, 8]
    lo = _bits(blocks[:, 4:8], 1, 4)                      # lo: [nb, 8]
    sc = (lo | (hi << 4)).to(torch.int8) - 32
    dl = _scaled(sc, d).view(nb, 8, 1)
    q = _lookup(_iq4_values(blocks.device), _nibbles(blocks[:, 8:136], 16)).view(nb, 8, 32)
    return (dl * q).view(nb, 256)


# Keep in step with quant._IQ_TYPES (a test checks the two agree).
IQ_BLOCK_FNS: dict[T, BlockFn] = {
    T.IQ2_XXS: _iq2_xxs,
    T.IQ2_XS: _iq2_xs,
    T.IQ2_S: _iq2_s,
    T.IQ3_XXS: _iq3_xxs,
    T.IQ3_S: _iq3_s,
    T.IQ1_S: _iq1_s,
    T.IQ1_M: _iq1_m,
    T.IQ4_NL: _iq4_nl,
    T.IQ4_XS: _iq4_xs,
}
