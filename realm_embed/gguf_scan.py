"""Bounded, validating GGUF pre-scan: header, metadata and tensor table, never tensor data.

The bytes come from an untrusted caller, so every count and length is checked against the bytes
that remain *before* anything is allocated: a 70-byte file that claims 50 million array items
fails at once, without a 400 MB list.  Layout (little-endian throughout):

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64                          24 bytes
    n_kv      x  key str | value type u32 | value
    n_tensors x  name str | n_dims u32 | dims u64 x n_dims (ne0 first) | ggml type u32 | offset u64
    padding to `alignment`, then the data section; tensor offsets are relative to its start
    str = length u64 | UTF-8 bytes          array = item type u32 | count u64 | count items

Decisions a caller should know:

* Error classes.  FormatError when the bytes cannot be a valid GGUF (checked first, so a
  truncated file is always a FormatError); LimitError when they could be but exceed a ScanLimits
  fence; UnsupportedError for valid files we do not read: GGUF v1, big-endian files, and ggml
  type ids this gguf-py does not know (they may come from a newer llama.cpp).
* Text.  Keys, tensor names and string values are strict UTF-8, as gguf-py reads them.  Items of
  string *arrays* decode with errors="surrogateescape": valid UTF-8 (every file gguf-py writes,
  every vocabulary from a tokenizer.json) reads exactly as gguf-py reads it, and raw-byte tokens
  (llama.cpp writes some, e.g. RWKV "world" vocabularies) survive: the tokenizer gets the file's
  bytes back with ``s.encode("utf-8", "surrogateescape")``.
* Numeric arrays are numpy *copies* (bool arrays as np.bool_), so the result never pins `buf`:
  an mmap can be closed right after the scan, and no one can write through into model bytes.
* Nested arrays are legal in the spec and gguf-py writes them (llama.cpp rejects them): they
  come back as lists of inner values, nesting bounded by ScanLimits.max_array_depth.
* Tensor data must be aligned, inside the buffer and non-overlapping; unlike llama.cpp we do not
  demand that tensors be contiguous and in table order.  Tensor names follow ggml (at most 63
  bytes), keys the spec (at most 65535 bytes, non-empty); dims count 1..4, as ggml writes them.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from .errors import ArgumentError, FormatError, LimitError, UnsupportedError

GGUF_MAGIC = b"GGUF"
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64            # ggml's name buffer, NUL included: names are at most 63 bytes
MAX_KEY_BYTES = (1 << 16) - 1  # the spec's bound on a key
INT64_MAX = (1 << 63) - 1      # ggml holds element counts and sizes in int64

_HEADER = struct.Struct("<4sIQQ")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# Smallest possible encodings, used to reject impossible counts before reading any item.
_MIN_KV = 8 + 1 + 4 + 1                # key length, 1-byte key, value type, 1-byte value
_MIN_TENSOR = 8 + 4 + 8 + 4 + 8        # name length (name may be empty), n_dims, one dim, type, offset
_MIN_ITEM = {GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 4 + 8}

# value type -> (struct for a scalar, numpy dtype for an array); bools are bytes, nonzero = True
_SCALARS: dict[int, tuple[struct.Struct, str]] = {
    GGUFValueType.UINT8: (struct.Struct("<B"), "<u1"), GGUFValueType.INT8: (struct.Struct("<b"), "<i1"),
    GGUFValueType.UINT16: (struct.Struct("<H"), "<u2"), GGUFValueType.INT16: (struct.Struct("<h"), "<i2"),
    GGUFValueType.UINT32: (struct.Struct("<I"), "<u4"), GGUFValueType.INT32: (struct.Struct("<i"), "<i4"),
    GGUFValueType.UINT64: (struct.Struct("<Q"), "<u8"), GGUFValueType.INT64: (struct.Struct("<q"), "<i8"),
    GGUFValueType.FLOAT32: (struct.Struct("<f"), "<f4"), GGUFValueType.FLOAT64: (struct.Struct("<d"), "<f8"),
    GGUFValueType.BOOL: (struct.Struct("<?"), "<u1"),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: GGMLQuantizationType
    dims: tuple[int, ...]     # GGUF order (ne0 first), as in the file
    shape: tuple[int, ...]    # numpy order = reversed(dims), what gguf.quants.dequantize returns
    n_elements: int
    offset: int               # absolute byte offset of the data in the file/buffer
    nbytes: int


@dataclass
class GGUFFile:
    version: int
    metadata: dict[str, object]     # key -> value, in file order
    tensors: dict[str, TensorInfo]  # name -> info, in file order
    alignment: int
    data_offset: int                # absolute start of the data section (padded end of the table)
    size: int                       # total buffer size


@dataclass(frozen=True)
class ScanLimits:
    """Fences against hostile files; the defaults admit any real model (a 1M-entry vocab)."""

    max_kv: int = 65536
    max_tensors: int = 65536
    max_string_bytes: int = 1 << 24   # one string value or array item (chat templates are ~10 KB)
    max_array_items: int = 1 << 24    # items of one array (each nested array counts on its own)
    max_array_depth: int = 2          # 1 = flat arrays only, 2 = arrays of arrays
    max_dims: int = GGML_MAX_DIMS


def _vname(vtype: int) -> str:
    return GGUFValueType(vtype).name


class _Cursor:
    """Reads forward through the buffer; every read checks the bytes that remain first."""

    def __init__(self, raw, size: int, limits: ScanLimits):
        self.raw, self.size, self.limits, self.pos = raw, size, limits, 0

    def need(self, n: int, what: str, item: str) -> None:
        if n > self.size - self.pos:
            raise FormatError(f"{what}: {item} needs {n} bytes at offset {self.pos} "
                              f"but only {self.size - self.pos} bytes remain in the file")

    def unpack(self, st: struct.Struct, what: str, item: str):
        self.need(st.size, what, item)
        (v,) = st.unpack_from(self.raw, self.pos)
        self.pos += st.size
        return v

    def string(self, what: str, item: str, max_len: int, over=LimitError, errors="strict") -> str:
        n = self.unpack(_U64, what, f"{item} length")
        if n > self.size - self.pos:
            raise FormatError(f"{what}: {item} claims {n} bytes but only "
                              f"{self.size - self.pos} bytes remain in the file")
        if n > max_len:
            raise over(f"{what}: {item} of {n} bytes is longer than the {max_len} allowed")
        b = self.raw[self.pos:self.pos + n]
        try:
            s = str(b, "utf-8", errors)
        except UnicodeDecodeError as e:
            raise FormatError(f"{what}: {item} is not valid UTF-8 at byte {e.start}: "
                              f"{bytes(b[:48])!r}") from None
        self.pos += n
        return s

    def value(self, vtype: int, what: str):
        scalar = _SCALARS.get(vtype)
        if scalar is not None:
            return self.unpack(scalar[0], what, f"{_vname(vtype)} value")
        if vtype == GGUFValueType.STRING:
            return self.string(what, "string", self.limits.max_string_bytes)
        if vtype == GGUFValueType.ARRAY:
            return self.array(what, 1)
        raise FormatError(f"{what}: unknown value type {vtype}")

    def array(self, what: str, depth: int):
        if depth > self.limits.max_array_depth:
            raise LimitError(f"{what}: arrays nested {depth} deep, more than "
                             f"max_array_depth={self.limits.max_array_depth}")
        itype = self.unpack(_U32, what, "array item type")
        n = self.unpack(_U64, what, "array length")
        scalar = _SCALARS.get(itype)
        min_item = scalar[0].size if scalar else _MIN_ITEM.get(itype)
        if min_item is None:
            raise FormatError(f"{what}: array of unknown value type {itype}")
        remain = self.size - self.pos
        if n * min_item > remain:
            raise FormatError(f"{what}: array claims {n} items but only {remain} bytes remain in the file")
        if n > self.limits.max_array_items:
            raise LimitError(f"{what}: array of {n} items exceeds max_array_items={self.limits.max_array_items}")
        if scalar is not None:
            # one vectorized read; copied (or compared, for bools) so it does not pin the buffer
            a = np.frombuffer(self.raw, scalar[1], n, self.pos)
            self.pos += n * min_item
            return a != 0 if itype == GGUFValueType.BOOL else a.copy()
        if itype == GGUFValueType.STRING:
            return self.strings(n, what)
        return [self.array(f"{what} item {i}", depth + 1) for i in range(n)]

    def strings(self, n: int, what: str) -> list[str]:
        # The hot path of a model load (49k tokens + 49k merges for SmolLM2): a bare loop with
        # one check per item.  Any trouble (too long, past the end) drops out of the loop, and
        # the checked reader re-walks the array to name the item and raise the right error.
        raw, pos, unpack = self.raw, self.pos, _U64.unpack_from
        max_len = min(self.limits.max_string_bytes, self.size)
        out: list[str] = []
        append = out.append
        try:
            for _ in range(n):
                (length,) = unpack(raw, pos)
                if length > max_len:
                    break
                pos += 8
                append(str(raw[pos:pos + length], "utf-8", "surrogateescape"))
                pos += length
        except struct.error:
            pass
        if len(out) < n or pos > self.size:
            for i in range(n):
                self.string(what, f"array item {i}", self.limits.max_string_bytes, errors="surrogateescape")
            raise AssertionError(f"{what}: string array failed its fast read but passed the checked one")
        self.pos = pos
        return out


def scan(buf, limits: ScanLimits = ScanLimits()) -> GGUFFile:
    """Parse and validate the GGUF header, metadata and tensor table held in `buf`.

    `buf`: any C-contiguous buffer (bytes, bytearray, memoryview, mmap.mmap); it is only read,
    and nothing returned refers to it.  Raises FormatError, LimitError or UnsupportedError
    (realm_embed.errors) with the key or tensor and the offending value in the message.
    """
    try:
        mv = memoryview(buf).cast("B")   # one byte per item; fails unless C-contiguous
    except TypeError:
        raise ArgumentError(f"buf must be a C-contiguous buffer (bytes, bytearray, memoryview, mmap), "
                            f"got {type(buf).__name__}") from None
    with mv:   # released on return, so the caller can close an mmap right away
        # Slicing bytes/bytearray/mmap yields bytes, which decode faster than memoryview slices.
        raw = buf if isinstance(buf, (bytes, bytearray, mmap.mmap)) else mv
        return _scan(raw, mv.nbytes, limits)


def _scan(raw, size: int, limits: ScanLimits) -> GGUFFile:
    if size >= 4 and bytes(raw[:4]) != GGUF_MAGIC:
        raise FormatError(f"GGUF header: bad magic {bytes(raw[:4])!r}, expected {GGUF_MAGIC!r}")
    if size < _HEADER.size:
        raise FormatError(f"GGUF header: the file is {size} bytes, shorter than the {_HEADER.size}-byte header")
    _, version, n_tensors, n_kv = _HEADER.unpack_from(raw, 0)
    if version & 0xFFFF == 0 and version != 0:
        raise UnsupportedError(f"GGUF header: version field {version:#010x} looks like a big-endian GGUF; "
                               "only little-endian files are supported")
    if version == 1:
        raise UnsupportedError("GGUF header: version 1 is no longer supported (only versions 2 and 3)")
    if version not in (2, 3):
        raise FormatError(f"GGUF header: unknown version {version} (expected 2 or 3)")
    remain = size - _HEADER.size
    if n_kv * _MIN_KV + n_tensors * _MIN_TENSOR > remain:
        raise FormatError(f"GGUF header: claims {n_tensors} tensors and {n_kv} keys, which need at least "
                          f"{n_kv * _MIN_KV + n_tensors * _MIN_TENSOR} bytes, but only {remain} bytes "
                          "remain in the file")
    if n_kv > limits.max_kv:
        raise LimitError(f"GGUF header: {n_kv} keys exceed max_kv={limits.max_kv}")
    if n_tensors > limits.max_tensors:
        raise LimitError(f"GGUF header: {n_tensors} tensors exceed max_tensors={limits.max_tensors}")

    cur = _Cursor(raw, size, limits)
    cur.pos = _HEADER.size
    metadata: dict[str, object] = {}
    alignment_type = None
    for i in range(n_kv):
        key = cur.string(f"GGUF key #{i}", "key", MAX_KEY_BYTES, over=FormatError)
        if not key:
            raise FormatError(f"GGUF key #{i}: the key is empty")
        what = f"GGUF key '{key}'"
        if key in metadata:
            raise FormatError(f"{what}: duplicate key (again as key #{i})")
        vtype = cur.unpack(_U32, what, "value type")
        metadata[key] = cur.value(vtype, what)
        if key == "general.alignment":
            alignment_type = vtype

    alignment = GGUF_DEFAULT_ALIGNMENT
    if alignment_type is not None:
        alignment = metadata["general.alignment"]
        if alignment_type != GGUFValueType.UINT32:
            raise FormatError(f"GGUF key 'general.alignment': must be UINT32, got "
                              f"{_vname(alignment_type)} {repr(alignment)[:40]}")
        if alignment == 0 or alignment & (alignment - 1):
            raise FormatError(f"GGUF key 'general.alignment': {alignment} is not a nonzero power of two")

    table = []  # (name, type, dims, n_elements, nbytes, offset relative to the data section)
    names: set[str] = set()
    for i in range(n_tensors):
        name = cur.string(f"GGUF tensor #{i}", "name", GGML_MAX_NAME - 1, over=FormatError)
        what = f"GGUF tensor '{name}'"
        if name in names:
            raise FormatError(f"{what}: duplicate tensor name (again as tensor #{i})")
        names.add(name)
        n_dims = cur.unpack(_U32, what, "dimension count")
        if not 1 <= n_dims <= GGML_MAX_DIMS:
            raise FormatError(f"{what}: {n_dims} dimensions, expected 1 to {GGML_MAX_DIMS}")
        if n_dims > limits.max_dims:
            raise LimitError(f"{what}: {n_dims} dimensions exceed max_dims={limits.max_dims}")
        cur.need(8 * n_dims, what, f"{n_dims} dimensions")
        dims = struct.unpack_from(f"<{n_dims}Q", raw, cur.pos)
        cur.pos += 8 * n_dims
        for j, d in enumerate(dims):
            if d > INT64_MAX:  # ggml reads ne as int64: this would be negative
                raise FormatError(f"{what}: dimension {j} is {d}, negative as an int64")
        n_elements = math.prod(dims)
        if n_elements > INT64_MAX:
            raise FormatError(f"{what}: dims {list(dims)} hold {n_elements} elements, more than INT64_MAX")
        type_id = cur.unpack(_U32, what, "ggml type")
        try:
            ggml_type = GGMLQuantizationType(type_id)
            block, type_size = GGML_QUANT_SIZES[ggml_type]
        except (ValueError, KeyError):
            raise UnsupportedError(f"{what}: unknown ggml type id {type_id}") from None
        if dims[0] % block:
            raise FormatError(f"{what}: row length ne0={dims[0]} is not a multiple of the "
                              f"{ggml_type.name} block size {block}")
        nbytes = n_elements // block * type_size
        if nbytes > INT64_MAX:
            raise FormatError(f"{what}: {n_elements} {ggml_type.name} elements need {nbytes} bytes, "
                              "more than INT64_MAX")
        rel = cur.unpack(_U64, what, "data offset")
        table.append((name, ggml_type, dims, n_elements, nbytes, rel))

    data_offset = -(-cur.pos // alignment) * alignment
    if table and data_offset > size:
        raise FormatError(f"GGUF data section: starts at {data_offset} (tensor table ends at {cur.pos}, "
                          f"aligned to {alignment}) but the file is only {size} bytes")
    tensors: dict[str, TensorInfo] = {}
    for name, ggml_type, dims, n_elements, nbytes, rel in table:
        what = f"GGUF tensor '{name}'"
        if rel % alignment:
            raise FormatError(f"{what}: data offset {rel} is not a multiple of the alignment {alignment}")
        start = data_offset + rel
        if start + nbytes > size:
            raise FormatError(f"{what}: data [{start}, {start + nbytes}) runs past the end of the "
                              f"file ({size} bytes)")
        tensors[name] = TensorInfo(name, ggml_type, tuple(dims), tuple(reversed(dims)), n_elements, start, nbytes)
    # Sorted by start, a tensor that overlaps any earlier one overlaps its predecessor.
    prev = None
    for t in sorted((t for t in tensors.values() if t.nbytes), key=lambda t: t.offset):
        if prev is not None and t.offset < prev.offset + prev.nbytes:
            raise FormatError(f"GGUF tensor '{t.name}': data [{t.offset}, {t.offset + t.nbytes}) overlaps "
                              f"tensor '{prev.name}' [{prev.offset}, {prev.offset + prev.nbytes})")
        prev = t
    return GGUFFile(version, metadata, tensors, alignment, data_offset, size)
