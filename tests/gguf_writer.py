"""A tiny GGUF writer for tests: valid files, and files broken in exactly one place.

Patterned on llama.cpp's tests/test-gguf.cpp (its "handcrafted" files): the file is built from
explicit parts, and every part a parser trusts can be overridden: the magic, the version, the
counts in the header, a value's type id, an array's or a string's claimed length, a tensor's
dimension count, type id and data offset, or the raw bytes of a value.

    b = GGUFBuilder()
    b.add("general.architecture", T.STRING, "llama")
    b.add("tokenizer.ggml.tokens", T.ARRAY, Array(T.STRING, ["a", "b"], count=50_000_000))
    b.add_tensor("w", GGMLQuantizationType.F32, dims=(4, 3))   # dims in GGUF order (ne0 first)
    data = b.build()

Layout follows the spec (little-endian): tensor data are placed in table order, each at the next
multiple of the alignment, and the file ends at the last byte of the last tensor (no trailing
padding), so that cutting off any byte leaves a broken file.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Sequence

from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType as T

_FORMATS = {
    T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I", T.INT32: "<i",
    T.UINT64: "<Q", T.INT64: "<q", T.FLOAT32: "<f", T.FLOAT64: "<d", T.BOOL: "<?",
}


@dataclass
class Array:
    item_type: int
    items: Sequence               # nested arrays: items are Array objects
    count: int | None = None      # the length written to the file, if not len(items)


@dataclass
class Raw:
    """Bytes written as the value, verbatim (for values no honest writer would produce)."""
    data: bytes


@dataclass
class Tensor:
    name: str | bytes
    ggml_type: int
    dims: Sequence[int]           # GGUF order, ne0 first
    data: bytes | None = None     # default: nbytes of a fixed pattern (empty if absurdly large)
    offset: int | None = None     # relative to the data section; default: next aligned slot
    n_dims: int | None = None     # the dimension count written, if not len(dims)


def tensor_nbytes(ggml_type: int, dims: Sequence[int]) -> int:
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    return math.prod(dims) // block * type_size


def pack_string(s: str | bytes, length: int | None = None) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b) if length is None else length) + b


def pack_value(vtype: int, value) -> bytes:
    """The bytes after a value's type id (for an array: item type, count, items)."""
    if isinstance(value, Raw):
        return value.data
    if vtype in _FORMATS:
        return struct.pack(_FORMATS[vtype], value)
    if vtype == T.STRING:
        return pack_string(value)
    if vtype == T.ARRAY:
        count = len(value.items) if value.count is None else value.count
        out = struct.pack("<IQ", value.item_type, count)
        return out + b"".join(pack_value(value.item_type, v) for v in value.items)
    raise ValueError(f"cannot pack value type {vtype}")


def _pad(n: int, align: int) -> int:
    return -(-n // align) * align


class GGUFBuilder:
    def __init__(self, version: int = 3, magic: bytes = b"GGUF"):
        self.version, self.magic = version, magic
        self.kv: list[tuple[str | bytes, int, int, object]] = []   # key, type id written, type, value
        self.tensors: list[Tensor] = []

    def add(self, key: str | bytes, vtype: int, value, type_id: int | None = None) -> "GGUFBuilder":
        self.kv.append((key, vtype if type_id is None else type_id, vtype, value))
        return self

    def add_tensor(self, name: str | bytes, ggml_type: int, dims: Sequence[int], **kw) -> "GGUFBuilder":
        self.tensors.append(Tensor(name, ggml_type, tuple(dims), **kw))
        return self

    def alignment(self) -> int:
        for key, _, vtype, value in self.kv:
            if key == "general.alignment" and vtype == T.UINT32 and value and not value & (value - 1):
                return value
        return GGUF_DEFAULT_ALIGNMENT

    def build(self, *, n_tensors: int | None = None, n_kv: int | None = None,
              alignment: int | None = None) -> bytes:
        align = alignment or self.alignment()
        out = bytearray(struct.pack("<4sIQQ", self.magic, self.version,
                                    len(self.tensors) if n_tensors is None else n_tensors,
                                    len(self.kv) if n_kv is None else n_kv))
        for key, type_id, vtype, value in self.kv:
            out += pack_string(key) + struct.pack("<I", type_id) + pack_value(vtype, value)

        placed: list[tuple[int, bytes]] = []   # (offset in the data section, data)
        next_free = 0
        for t in self.tensors:
            data = t.data
            if data is None:
                try:
                    n = tensor_nbytes(t.ggml_type, t.dims)
                except (ValueError, KeyError):
                    n = 0
                data = (bytes(range(256)) * (n // 256 + 1))[:n] if 0 <= n <= 1 << 24 else b""
            offset = next_free if t.offset is None else t.offset
            next_free = _pad(offset + len(data), align)
            placed.append((offset, data))
            out += pack_string(t.name)
            out += struct.pack("<I", len(t.dims) if t.n_dims is None else t.n_dims)
            out += b"".join(struct.pack("<Q", d) for d in t.dims)
            out += struct.pack("<IQ", t.ggml_type, offset)

        if not self.tensors:
            return bytes(out)
        out += bytes(_pad(len(out), align) - len(out))
        blob = bytearray(max((o + len(d) for o, d in placed if o < 1 << 32), default=0))
        for o, d in placed:
            if o < 1 << 32:
                blob[o:o + len(d)] = d
        return bytes(out + blob)
