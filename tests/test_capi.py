"""The C ABI (include/realm.h, librealm.so) through ctypes, as a foreign host calls it.

From a Python process the library reuses the running interpreter (embedding.md #10), so its
registry is this process's: C results are compared with the Python API on the same models, bit
for bit.  Every function of the header is called here (test_every_function_is_exercised checks
that), with correct use and with misuse: NULL pointers one at a time, size queries, too-small
buffers with guard bytes, unknown and stale ids, out-of-range layers/positions/tokens, wrong
hidden sizes, freed sessions.
"""
from __future__ import annotations

import ctypes as C
import json
import re
import subprocess
from ctypes import byref, c_int32, c_size_t, c_uint32, c_uint64
from pathlib import Path

import pytest
import torch

import realm_embed as realm
from realm_embed import _capi_ctypes as capi
from realm_embed import errors

ROOT = Path(__file__).resolve().parent.parent
H = capi.DEFINES
OK, E_ARG, E_NOT_FOUND, E_RANGE, E_SMALL = (H["REALM_OK"], H["REALM_E_ARG"], H["REALM_E_NOT_FOUND"],
                                           H["REALM_E_RANGE"], H["REALM_E_BUFFER_TOO_SMALL"])
GUARD = 16
PROMPT = "The capital of France is"


# ---- helpers ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lib():
    lib = capi.load()
    _LIB[0] = lib
    rc, msg = call(lib.realm_init)
    assert rc == OK, msg
    return lib


def call(fn, *args):
    """Call fn(*args, &err); check err and realm_last_error agree with the result code."""
    err = capi.Error()
    err.code, err.message = 12345, b"stale garbage"      # must be overwritten, also on success
    rc = fn(*args, byref(err))
    message = err.message.decode()
    assert err.code == rc
    assert (message == "") == (rc == OK), (rc, message)
    assert _last_error() == message
    return rc, message


def _last_error() -> str:
    return _LIB[0].realm_last_error().decode()


_LIB = [None]                   # the library of the module fixture, for call()


def ok(fn, *args):
    rc, msg = call(fn, *args)
    assert rc == OK, msg


def fails(code, fn, *args, match: str | None = None) -> str:
    rc, msg = call(fn, *args)
    assert rc == code, (rc, msg)
    assert msg.startswith(fn.__name__ + ": "), msg
    if match:
        assert re.search(match, msg), msg
    return msg


def guarded(n: int, ctype=C.c_char):
    """A buffer of n elements followed by GUARD bytes, all set to 0xAB."""
    size = C.sizeof(ctype) * n + GUARD
    raw = (C.c_char * size)()
    C.memset(raw, 0xAB, size)
    return raw


def untouched(raw) -> bool:
    return bytes(raw) == b"\xab" * len(raw)


def guard_ok(raw) -> bool:
    return bytes(raw)[-GUARD:] == b"\xab" * GUARD


def floats(raw, n: int) -> torch.Tensor:
    return torch.frombuffer(bytearray(bytes(raw)[:4 * n]), dtype=torch.float32)


def ints(raw, n: int) -> list[int]:
    return list(torch.frombuffer(bytearray(bytes(raw)[:4 * n]), dtype=torch.int32).tolist()) if n else []


def i32s(values):
    return (c_int32 * max(len(values), 1))(*values)


def f32s(t: torch.Tensor):
    t = t.detach().to(torch.float32).contiguous().reshape(-1)
    return (C.c_float * t.numel()).from_buffer_copy(t.numpy().tobytes())


def text_of(lib, fn, *args) -> bytes:
    """The two-call protocol: size query, then exactly that size; returns the text (no NUL)."""
    size = c_size_t(0)
    ok(fn, *args, None, 0, byref(size))
    need = size.value
    buf = guarded(need)
    size2 = c_size_t(0)
    ok(fn, *args, buf, need, byref(size2))
    assert size2.value == need and guard_ok(buf)
    raw = bytes(buf)[:need]
    assert raw[-1:] == b"\0"
    return raw[:-1]


def check_buffer_protocol(fn, *args, elem=C.c_char):
    """Size query, exact fit, one short (guard intact, size written), NULL with cap > 0."""
    size = c_size_t(0)
    ok(fn, *args, None, 0, byref(size))
    need = size.value
    assert need > 0
    small = guarded(need - 1, elem)
    size.value = 0
    fails(E_SMALL, fn, *args, small, need - 1, byref(size), match=r"\b%d\b" % need)
    assert size.value == need and untouched(small)
    zero = guarded(0, elem)
    size.value = 0
    fails(E_SMALL, fn, *args, zero, 0, byref(size))       # a non-NULL buffer of 0 is too small
    assert size.value == need and untouched(zero)
    fails(E_ARG, fn, *args, None, 5, byref(size), match="is NULL but .* is 5")
    exact = guarded(need, elem)
    ok(fn, *args, exact, need, byref(size))
    assert size.value == need and guard_ok(exact)
    return exact, need


# ---- fixtures: two models, sessions ----------------------------------------------------------

@pytest.fixture(scope="module")
def model(lib, mid):
    """The default model stored through the ABI: the same id as the Python API's (refcounted)."""
    out = c_uint64(0)
    ok(lib.realm_model_store_default, 0, byref(out))
    assert out.value == mid
    yield out.value
    ok(lib.realm_model_remove, out.value)                # drop the reference this fixture took


@pytest.fixture(scope="module")
def info(lib, model):
    i = capi.ModelInfo()
    ok(lib.realm_model_info_get, model, byref(i))
    return i


def variant_bytes(model_path: str, tag: bytes) -> bytes:
    """The default GGUF with one metadata character changed: other content, another model."""
    data = bytearray(Path(model_path).read_bytes())
    at = data.find(b"Smollm2 135M 8k")
    assert at > 0
    data[at:at + len(tag)] = tag
    return bytes(data)


def new_session(lib, model, n_ctx=0) -> int:
    out = c_uint64(0)
    ok(lib.realm_session_create, model, n_ctx, byref(out))
    return out.value


# ---- the header and the library --------------------------------------------------------------

def test_result_codes_equal_errors_py():
    names = [n for n in dir(errors) if n == "OK" or n.startswith("E_")]
    assert len(names) == 13
    for n in names:
        assert H[f"REALM_{n}"] == getattr(errors, n), n
    header_codes = {k for k in H if k == "REALM_OK" or k.startswith("REALM_E_")}
    assert header_codes == {f"REALM_{n}" for n in names}


def test_errstr_static_text_for_any_code(lib):
    texts = {lib.realm_errstr(code).decode() for code in range(-12, 1)}
    assert len(texts) == 13 and "not found" in texts
    assert lib.realm_errstr(-999).decode() == lib.realm_errstr(7).decode() == "unknown error code"


def test_versions(lib):
    assert lib.realm_version().decode() == H_str("REALM_VERSION") == realm.__version__
    major, minor, patch = (H[f"REALM_VERSION_{p}"] for p in ("MAJOR", "MINOR", "PATCH"))
    assert lib.realm_version_number() == major * 1_000_000 + minor * 1000 + patch
    assert lib.realm_abi_version() == H["REALM_ABI_VERSION"] == 1


def H_str(name):
    return capi.header().defines()[name].strip('"')


def test_struct_layouts_match_the_header_sizes():
    for cname, suffix in [("realm_model_info", "MODEL_INFO"), ("realm_tensor_info", "TENSOR_INFO"),
                          ("realm_sampler_params", "SAMPLER_PARAMS"), ("realm_generate_params", "GENERATE_PARAMS"),
                          ("realm_generate_result", "GENERATE_RESULT"), ("realm_session_params", "SESSION_PARAMS")]:
        assert C.sizeof(capi.STRUCTS[cname]) == H[f"REALM_{suffix}_SIZE_V1"], cname
    assert C.sizeof(capi.Error) == 4 + H["REALM_ERROR_MESSAGE_SIZE"]


def test_library_exports_exactly_the_header_functions():
    from realm_embed import buildinfo
    names = {f.name for f in capi.header().functions()}
    out = subprocess.run(["nm", "-D", "--defined-only", str(buildinfo.library_path())],
                         capture_output=True, text=True, check=True).stdout
    exported = {ln.split()[-1] for ln in out.splitlines() if ln.split()[-1].startswith("realm")}
    assert exported == names


def test_every_function_is_exercised():
    """Every function of the header is called somewhere in the ctypes tests."""
    sources = "".join(p.read_text() for p in Path(__file__).parent.glob("test_capi*.py"))
    missing = [f.name for f in capi.header().functions() if f"lib.{f.name}" not in sources]
    assert not missing


# ---- errors ----------------------------------------------------------------------------------

def test_error_reporting_paths(lib, model):
    # the out-parameter and the thread-local agree, and the message names function and value
    msg = fails(E_NOT_FOUND, lib.realm_session_n_ctx, 987654321, byref(c_uint32()), match="987654321")
    assert lib.realm_last_error().decode() == msg
    # err may be NULL: the thread-local still has the message
    assert lib.realm_session_reset(987654321, None) == E_NOT_FOUND
    assert "987654321" in lib.realm_last_error().decode()
    # a success clears it
    ok(lib.realm_model_info_get, model, byref(capi.ModelInfo()))
    assert lib.realm_last_error() == b""
    assert lib.realm_init(None) == OK and lib.realm_last_error() == b""


def test_last_error_is_per_thread(lib):
    import threading
    assert lib.realm_session_reset(111111, None) == E_NOT_FOUND
    seen = []
    t = threading.Thread(target=lambda: seen.append(lib.realm_last_error()))
    t.start()
    t.join()
    assert seen == [b""]
    assert b"111111" in lib.realm_last_error()


def test_long_message_is_cut_at_a_character_boundary(lib, model):
    text = ("é" * 2000).encode()                          # 4000 bytes of 2-byte characters
    fails(E_NOT_FOUND, lib.realm_tensor_info_get, model, text, byref(capi.TensorInfo()))
    err = capi.Error()
    lib.realm_tensor_info_get(model, text, byref(capi.TensorInfo()), byref(err))
    raw = err.message
    assert len(raw) <= H["REALM_ERROR_MESSAGE_SIZE"] - 1
    raw.decode("utf-8")                                    # no split character


# ---- models ----------------------------------------------------------------------------------

def test_model_info_equals_python(lib, model, info):
    d = realm.get_model_info(model)
    for key in ("id", "n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "n_rot", "n_vocab",
                "n_ctx_train", "n_tensors", "rope_freq_base", "rms_eps", "total_bytes", "bos_id", "eos_id"):
        assert getattr(info, key) == d[key], key
    assert info.has_chat_template == 1 and info.struct_size == C.sizeof(capi.ModelInfo)
    assert text_of(lib, lib.realm_model_info_string, model, H["REALM_MODEL_ARCHITECTURE"]) == b"llama"
    assert text_of(lib, lib.realm_model_info_string, model, H["REALM_MODEL_NAME"]).decode() == d["name"]
    as_json = json.loads(text_of(lib, lib.realm_model_info_string, model, H["REALM_MODEL_INFO_JSON"]))
    assert as_json == json.loads(json.dumps(d))
    check_buffer_protocol(lib.realm_model_info_string, model, H["REALM_MODEL_NAME"])
    fails(E_ARG, lib.realm_model_info_string, model, 99, None, 0, byref(c_size_t()), match="key 99")


def test_model_info_struct_versioning(lib, model):
    small = capi.ModelInfo()
    small.struct_size = 4
    fails(E_ARG, lib.realm_model_info_get, model, byref(small), match=r"info->struct_size is 4")
    # an older caller's shorter struct: only its bytes are written
    buf = (C.c_char * 200)()
    C.memset(buf, 0xAB, 200)
    C.cast(buf, C.POINTER(c_uint32))[0] = 16                # fields up to id
    fails(E_ARG, lib.realm_model_info_get, model, C.cast(buf, C.POINTER(capi.ModelInfo)))
    C.cast(buf, C.POINTER(c_uint32))[0] = 120               # a newer caller's longer struct
    ok(lib.realm_model_info_get, model, C.cast(buf, C.POINTER(capi.ModelInfo)))
    got = capi.ModelInfo.from_buffer_copy(bytes(buf)[:88])
    assert got.n_layer == 30 and got.struct_size == 120
    assert bytes(buf)[88:] == b"\xab" * 112


def test_tensors_equal_python(lib, model, info):
    names = realm.list_tensors(model)
    assert info.n_tensors == len(names)
    for i in (0, 1, len(names) - 1):
        assert text_of(lib, lib.realm_model_tensor_name, model, i).decode() == names[i]
    fails(E_RANGE, lib.realm_model_tensor_name, model, len(names), None, 0, byref(c_size_t()),
          match=f"index {len(names)} out of range")
    check_buffer_protocol(lib.realm_model_tensor_name, model, 0)
    for name in ("token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight"):
        ti = capi.TensorInfo()
        ok(lib.realm_tensor_info_get, model, name.encode(), byref(ti))
        py = realm.tensor_info(model, name)
        assert list(ti.shape)[:ti.n_dims] == list(py.shape) and ti.n_dims == len(py.shape)
        assert list(ti.shape)[ti.n_dims:] == [0] * (4 - ti.n_dims)
        assert (ti.n_elements, ti.ggml_type, ti.n_bytes) == (py.n_elements, int(py.ggml_type), py.nbytes)
    fails(E_NOT_FOUND, lib.realm_tensor_info_get, model, b"no.such.tensor", byref(capi.TensorInfo()),
          match="no.such.tensor")
    # the data, bit for bit: a small F32 tensor and a quantized one
    for name in ("output_norm.weight", "blk.0.attn_k.weight"):
        raw, n = check_buffer_protocol(lib.realm_tensor_get_f32, model, name.encode(), elem=C.c_float)
        assert torch.equal(floats(raw, n), realm.get_tensor(model, name).reshape(-1))
    fails(E_NOT_FOUND, lib.realm_tensor_get_f32, model, b"nope", None, 0, byref(c_size_t()))
    fails(E_ARG, lib.realm_tensor_get_f32, model, b"\xff\xfe", None, 0, byref(c_size_t()), match="UTF-8")


def test_store_bytes_file_ids_and_remove(lib, model, model_path):
    data = Path(model_path).read_bytes()
    out = c_uint64(0)
    # the same bytes are the same model (a reference more), from memory or from the file
    ok(lib.realm_model_store, data, len(data), 0, byref(out))
    assert out.value == model
    ok(lib.realm_model_remove, model)
    ok(lib.realm_model_store_file, model_path.encode(), 0, byref(out))
    assert out.value == model
    ok(lib.realm_model_remove, model)
    # other content: a new id; its own requested id; conflicts
    var = variant_bytes(model_path, b"V")
    ok(lib.realm_model_store, var, len(var), 0, byref(out))
    first = out.value
    assert first != model and realm.get_model_info(first)["name"].startswith("V")
    fails(H["REALM_E_CONFLICT"], lib.realm_model_store, var, len(var), 0x1234, byref(out))
    fails(H["REALM_E_CONFLICT"], lib.realm_model_store, data, len(data), first, byref(out))
    # a model in use cannot go; then it can, and its id is stale for good
    s = new_session(lib, first)
    fails(H["REALM_E_BUSY"], lib.realm_model_remove, first, match="live session")
    ok(lib.realm_session_free, s)
    ok(lib.realm_model_remove, first)
    fails(E_NOT_FOUND, lib.realm_model_info_get, first, byref(capi.ModelInfo()), match=f"{first:#x}")
    fails(E_NOT_FOUND, lib.realm_model_remove, first)
    fails(E_NOT_FOUND, lib.realm_session_create, first, 0, byref(out))
    # the same bytes again: a new id, never the removed one
    ok(lib.realm_model_store, var, len(var), 0, byref(out))
    assert out.value not in (first, 0)
    ok(lib.realm_model_remove, out.value)
    # a chosen id
    ok(lib.realm_model_store, var, len(var), 0xABCDEF, byref(out))
    assert out.value == 0xABCDEF
    ok(lib.realm_model_remove, 0xABCDEF)
    ok(lib.realm_model_remove, 0)                          # removing nothing is a no-op


def test_store_bad_input(lib, tmp_path):
    out = c_uint64(0)
    fails(H["REALM_E_FORMAT"], lib.realm_model_store, b"not a gguf file at all", 22, 0, byref(out))
    fails(E_ARG, lib.realm_model_store, b"x", 0, 0, byref(out), match="size is 0")
    fails(H["REALM_E_IO"], lib.realm_model_store_file, str(tmp_path / "missing.gguf").encode(), 0, byref(out),
          match="does not exist")
    fails(H["REALM_E_IO"], lib.realm_model_store_file, str(tmp_path).encode(), 0, byref(out), match="directory")
    assert out.value == 0                                  # outputs untouched on failure


# ---- sessions --------------------------------------------------------------------------------

def test_session_lifecycle(lib, model, info):
    s = new_session(lib, model, 64)
    n, m = c_uint32(99), c_uint64(0)
    ok(lib.realm_session_n_ctx, s, byref(n))
    assert n.value == 64
    ok(lib.realm_session_n_tokens, s, byref(n))
    assert n.value == 0
    ok(lib.realm_session_model, s, byref(m))
    assert m.value == model
    logits = guarded(info.n_vocab, C.c_float)
    ok(lib.realm_decode, s, i32s([504, 3575, 282]), 3, 0, logits, info.n_vocab)
    ok(lib.realm_session_n_tokens, s, byref(n))
    assert n.value == 3
    child = c_uint64(0)
    ok(lib.realm_session_fork, s, byref(child))
    assert child.value not in (0, s)
    ok(lib.realm_session_n_tokens, child.value, byref(n))
    assert n.value == 3
    ok(lib.realm_session_truncate, s, 1)
    ok(lib.realm_session_n_tokens, s, byref(n))
    assert n.value == 1
    fails(E_RANGE, lib.realm_session_truncate, s, 2, match="out of range")
    ok(lib.realm_session_reset, child.value)
    ok(lib.realm_session_n_tokens, child.value, byref(n))
    assert n.value == 0
    ok(lib.realm_session_free, child.value)
    ok(lib.realm_session_free, s)
    ok(lib.realm_session_free, 0)                          # freeing nothing is a no-op
    fails(E_RANGE, lib.realm_session_create, model, info.n_ctx_train + 1, byref(m), match="n_ctx")
    fails(E_NOT_FOUND, lib.realm_session_create, 0xDEAD, 0, byref(m))


def test_calls_on_a_freed_session(lib, model, info):
    s = new_session(lib, model, 16)
    ok(lib.realm_session_free, s)
    D, V = info.n_embd, info.n_vocab
    h, out = (C.c_float * D)(), (C.c_float * V)()
    n32, n64 = c_uint32(), c_uint64()
    for fn, args in [
        (lib.realm_session_free, ()), (lib.realm_session_reset, ()), (lib.realm_session_truncate, (0,)),
        (lib.realm_session_fork, (byref(n64),)), (lib.realm_session_n_tokens, (byref(n32),)),
        (lib.realm_session_n_ctx, (byref(n32),)), (lib.realm_session_model, (byref(n64),)),
        (lib.realm_embed_tokens, (i32s([1]), 1, out, V)),
        (lib.realm_forward_layer, (0, 0, h, 1, D, out, V)),
        (lib.realm_compute_logits, (h, 1, D, out, V)),
        (lib.realm_decode, (i32s([1]), 1, 0, out, V)),
        (lib.realm_generate, (b"hi", 2, None, None)),
        (lib.realm_generate_tokens, (i32s([1]), 1, None, None)),
    ]:
        fails(E_NOT_FOUND, fn, s, *args, match=f"session {s}")


def test_session_create_ex_precision_and_device(lib, model, info):
    ids = realm.tokenize(model, PROMPT)
    V = info.n_vocab
    # the defaults: realm_session_params_default fills the struct as REALM_SESSION_PARAMS_INIT
    default = capi.SessionParams()
    default.struct_size = 0
    lib.realm_session_params_default(byref(default))
    assert (default.struct_size, default.n_ctx, default.precision, default.device) == \
        (H["REALM_SESSION_PARAMS_SIZE_V1"], 0, H["REALM_PRECISION_EXACT"], None)
    lib.realm_session_params_default(None)                  # a no-op
    # a fast session through the ABI equals the Python API's fast session, bit for bit
    fast = capi.SessionParams(n_ctx=64, precision=H["REALM_PRECISION_FAST"], device=b"cpu")
    s = c_uint64(0)
    ok(lib.realm_session_create_ex, model, byref(fast), byref(s))
    py = realm.create_session(model, 64, precision="fast")
    n = c_uint32()
    try:
        assert realm.get_session(s.value).precision == "fast"
        ok(lib.realm_session_n_ctx, s, byref(n))
        assert n.value == 64
        out = guarded(V, C.c_float)
        ok(lib.realm_decode, s, i32s(ids), len(ids), 0, out, V)
        assert guard_ok(out)
        expected = realm.decode(py, ids)
        assert torch.equal(floats(out, V), expected)
    finally:
        ok(lib.realm_session_free, s)
        realm.session_free(py)
    py = realm.create_session(model, 64)
    exact = realm.decode(py, ids)
    realm.session_free(py)
    assert not torch.equal(expected, exact)                 # fast really is another path
    # exact by default: NULL params, and params from the defaults
    for params in (None, byref(default)):
        ok(lib.realm_session_create_ex, model, params, byref(s))
        assert realm.get_session(s.value).precision == "exact"
        assert str(realm.get_session(s.value).device) == "cpu"
        ok(lib.realm_session_n_ctx, s, byref(n))
        assert n.value == min(2048, info.n_ctx_train)
        out = (C.c_float * V)()
        ok(lib.realm_decode, s, i32s(ids), len(ids), 0, out, V)
        assert torch.equal(floats(out, V), exact)
        ok(lib.realm_session_free, s)
    # misuse: nothing is created
    bad = capi.SessionParams(precision=7)
    fails(E_ARG, lib.realm_session_create_ex, model, byref(bad), byref(s),
          match=r"params->precision is 7, expected REALM_PRECISION_EXACT \(0\) or REALM_PRECISION_FAST \(1\)")
    fails(E_ARG, lib.realm_session_create_ex, model, byref(default), None, match="session_out is NULL")
    small = capi.SessionParams()
    small.struct_size = 8
    fails(E_ARG, lib.realm_session_create_ex, model, byref(small), byref(s), match="params->struct_size is 8")
    odd = capi.SessionParams(device=b"tpu")
    fails(E_ARG, lib.realm_session_create_ex, model, byref(odd), byref(s), match="'tpu'")
    fails(E_RANGE, lib.realm_session_create_ex, model, byref(capi.SessionParams(n_ctx=info.n_ctx_train + 1)),
          byref(s), match="n_ctx")
    fails(E_NOT_FOUND, lib.realm_session_create_ex, 0xDEAD, None, byref(s))
    cuda = capi.SessionParams(device=b"cuda")
    if torch.cuda.is_available():
        ok(lib.realm_session_create_ex, model, byref(cuda), byref(s))
        assert realm.get_session(s.value).device.type == "cuda"
        ok(lib.realm_session_free, s)
    else:
        fails(H["REALM_E_UNSUPPORTED"], lib.realm_session_create_ex, model, byref(cuda), byref(s),
              match="CUDA is not available")


# ---- compute ---------------------------------------------------------------------------------

def test_decode_is_bit_identical_to_python(lib, model, info):
    ids = realm.tokenize(model, PROMPT)
    V = info.n_vocab
    s = new_session(lib, model)
    py = realm.create_session(model)
    try:
        out = guarded(V, C.c_float)
        ok(lib.realm_decode, s, i32s(ids), len(ids), 0, out, V)
        assert guard_ok(out)
        expected = realm.decode(py, ids)
        assert torch.equal(floats(out, V), expected)
        assert realm.detokenize(model, [int(expected.argmax())]) == " Paris"
        # the next token, with every row of logits
        nxt = [int(expected.argmax()), 28]
        every = guarded(2 * V, C.c_float)
        ok(lib.realm_decode, s, i32s(nxt), 2, H["REALM_DECODE_ALL_LOGITS"], every, 2 * V)
        assert torch.equal(floats(every, 2 * V).view(2, V), realm.decode(py, nxt, all_logits=True))
        assert guard_ok(every)
    finally:
        ok(lib.realm_session_free, s)
        realm.session_free(py)


def test_layer_loop_is_bit_identical_to_python(lib, model, info):
    ids = realm.tokenize(model, PROMPT)
    T, D, V, L = len(ids), info.n_embd, info.n_vocab, info.n_layer
    s = new_session(lib, model)
    py = realm.create_session(model)
    try:
        h = guarded(T * D, C.c_float)
        ok(lib.realm_embed_tokens, s, i32s(ids), T, h, T * D)
        x = realm.embed_tokens(py, ids)
        assert torch.equal(floats(h, T * D).view(T, D), x) and guard_ok(h)
        buf = (C.c_float * (T * D)).from_buffer_copy(bytes(h)[:4 * T * D])
        for layer in range(L):
            if layer % 2:                                  # out == hidden: in place
                ok(lib.realm_forward_layer, s, layer, 0, buf, T, D, buf, T * D)
            else:
                nxt = (C.c_float * (T * D))()
                ok(lib.realm_forward_layer, s, layer, 0, buf, T, D, nxt, T * D)
                buf = nxt
            x = realm.forward_layer(py, layer, x, 0)
            assert torch.equal(torch.frombuffer(bytearray(buf), dtype=torch.float32).view(T, D), x), layer
        n = c_uint32()
        ok(lib.realm_session_n_tokens, s, byref(n))
        assert n.value == T
        logits = guarded(T * V, C.c_float)
        ok(lib.realm_compute_logits, s, buf, T, D, logits, T * V)
        expected = realm.compute_logits(py, x)
        assert torch.equal(floats(logits, T * V).view(T, V), expected) and guard_ok(logits)
        assert realm.detokenize(model, [int(expected[-1].argmax())]) == " Paris"
    finally:
        ok(lib.realm_session_free, s)
        realm.session_free(py)


def test_compute_misuse_changes_nothing(lib, model, info):
    D, V, L = info.n_embd, info.n_vocab, info.n_layer
    s = new_session(lib, model, 8)
    try:
        logits = guarded(V, C.c_float)
        ok(lib.realm_decode, s, i32s([504, 3575]), 2, 0, logits, V)
        before = bytes(logits)[:4 * V]
        n = c_uint32()

        def n_tokens():
            ok(lib.realm_session_n_tokens, s, byref(n))
            return n.value

        h = (C.c_float * (2 * D))(*([0.01] * (2 * D)))
        out = guarded(2 * D, C.c_float)
        fails(E_RANGE, lib.realm_forward_layer, s, L, 0, h, 2, D, out, 2 * D, match=f"layer {L} out of range")
        fails(E_RANGE, lib.realm_forward_layer, s, 0, 5, h, 2, D, out, 2 * D, match="pos 5")
        fails(E_RANGE, lib.realm_forward_layer, s, 0, 2, (C.c_float * (8 * D))(), 8, D,
              guarded(8 * D, C.c_float), 8 * D, match="n_ctx 8")
        fails(E_ARG, lib.realm_forward_layer, s, 0, 0, h, 2, D - 1, out, 2 * D, match=f"n_embd is {D - 1}.*{D}")
        fails(E_ARG, lib.realm_forward_layer, s, 0, 0, h, 0, D, out, 2 * D, match="n_tokens is 0")
        fails(E_SMALL, lib.realm_forward_layer, s, 0, 0, h, 2, D, out, 2 * D - 1, match=str(2 * D))
        nan = (C.c_float * (2 * D))(*([float("nan")] * (2 * D)))
        fails(E_ARG, lib.realm_forward_layer, s, 0, 0, nan, 2, D, out, 2 * D, match="NaN")
        fails(E_ARG, lib.realm_compute_logits, s, h, 2, 3, out, 2 * V, match="n_embd is 3")
        fails(E_SMALL, lib.realm_compute_logits, s, h, 2, D, out, 2 * V - 1, match=f"{2 * V}")
        fails(E_SMALL, lib.realm_embed_tokens, s, i32s([1, 2]), 2, out, 2 * D - 1)
        fails(E_RANGE, lib.realm_embed_tokens, s, i32s([V]), 1, out, D, match=f"token id {V}")
        fails(E_RANGE, lib.realm_embed_tokens, s, i32s([-1]), 1, out, D, match="token id -1")
        assert untouched(out)
        fails(E_RANGE, lib.realm_decode, s, i32s([1, V + 5]), 2, 0, logits, V, match=f"token id {V + 5}")
        fails(E_RANGE, lib.realm_decode, s, i32s(list(range(7))), 7, 0, logits, V, match="n_ctx 8")
        fails(E_SMALL, lib.realm_decode, s, i32s([1]), 1, 0, logits, V - 1, match=f"{V}")
        fails(E_SMALL, lib.realm_decode, s, i32s([1, 2]), 2, H["REALM_DECODE_ALL_LOGITS"], logits, V)
        fails(E_ARG, lib.realm_decode, s, i32s([1]), 1, 8, logits, V, match="unknown bits 0x8")
        fails(E_ARG, lib.realm_decode, s, None, 0, 0, logits, V, match="n_tokens is 0")
        fails(E_ARG, lib.realm_decode, s, None, 3, 0, logits, V, match="ids is NULL but n_tokens is 3")
        assert bytes(logits)[:4 * V] == before and guard_ok(logits)
        assert n_tokens() == 2                             # every failure left the cache alone
        ok(lib.realm_decode, s, i32s([282]), 1, 0, logits, V)
        py = realm.create_session(model)
        try:
            realm.decode(py, [504, 3575])
            assert torch.equal(floats(logits, V), realm.decode(py, [282]))
        finally:
            realm.session_free(py)
    finally:
        ok(lib.realm_session_free, s)


# ---- text ------------------------------------------------------------------------------------

TEXTS = ["The capital of France is", "<|im_start|>user\nHi<|im_end|>", "héllo wörld ✓ 日本", ""]


def test_tokenize_equals_python(lib, model):
    for text in TEXTS:
        raw = text.encode()
        for flags in range(4):
            n = c_size_t(0)
            ok(lib.realm_tokenize, model, raw or None, len(raw), flags, None, 0, byref(n))
            expected = realm.tokenize(model, text, add_special=bool(flags & 1), parse_special=bool(flags & 2))
            assert n.value == len(expected)
            buf = guarded(n.value, c_int32)
            ok(lib.realm_tokenize, model, raw, len(raw), flags, buf, n.value, byref(n))
            assert ints(buf, n.value) == expected and guard_ok(buf)
    check_buffer_protocol(lib.realm_tokenize, model, b"The capital", 11, 3, elem=c_int32)
    # text_len, not the NUL, ends the text
    n = c_size_t(0)
    ok(lib.realm_tokenize, model, b"The capital of", 3, 3, None, 0, byref(n))
    assert n.value == len(realm.tokenize(model, "The"))
    fails(E_ARG, lib.realm_tokenize, model, b"ok \xff", 4, 3, None, 0, byref(n), match="not valid UTF-8 .*byte 3")
    fails(E_ARG, lib.realm_tokenize, model, b"x", 1, 4, None, 0, byref(n), match="unknown bits")
    fails(E_NOT_FOUND, lib.realm_tokenize, 77, b"x", 1, 3, None, 0, byref(n))


def test_detokenize_and_pieces_equal_python(lib, model, info):
    for text in TEXTS[:3]:
        ids = realm.tokenize(model, text)
        assert text_of(lib, lib.realm_detokenize, model, i32s(ids), len(ids)).decode() == realm.detokenize(model, ids)
    assert text_of(lib, lib.realm_detokenize, model, None, 0) == b""
    ids = realm.tokenize(model, "日本")
    check_buffer_protocol(lib.realm_detokenize, model, i32s(ids), len(ids))
    fails(E_RANGE, lib.realm_detokenize, model, i32s([1, info.n_vocab]), 2, None, 0, byref(c_size_t()),
          match=f"token id {info.n_vocab}")
    # pieces are raw bytes: a byte-level token may be half a character
    half = next(t for t in range(256, 2000) if _invalid_utf8(realm.token_piece(model, t)))
    for t in (0, 1, 504, half):
        assert text_of(lib, lib.realm_token_piece, model, t) == realm.token_piece(model, t)
    check_buffer_protocol(lib.realm_token_piece, model, 504)
    fails(E_RANGE, lib.realm_token_piece, model, -1, None, 0, byref(c_size_t()), match="token id -1")
    fails(E_RANGE, lib.realm_token_piece, model, info.n_vocab, None, 0, byref(c_size_t()))


def _invalid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_chat_template_equals_python(lib, model):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France? ✓"}]
    roles = (C.c_char_p * 2)(*[m["role"].encode() for m in messages])
    contents = (C.c_char_p * 2)(*[m["content"].encode() for m in messages])
    for flags in (0, 1):
        expected = realm.apply_chat_template(model, messages, add_generation_prompt=bool(flags))
        got = text_of(lib, lib.realm_chat_template, model, roles, contents, 2, flags)
        assert got.decode() == expected
        js = json.dumps(messages).encode()
        assert text_of(lib, lib.realm_chat_template_json, model, js, flags).decode() == expected
    check_buffer_protocol(lib.realm_chat_template, model, roles, contents, 2, 1)
    check_buffer_protocol(lib.realm_chat_template_json, model, json.dumps(messages).encode(), 1)
    size = c_size_t()
    fails(E_ARG, lib.realm_chat_template_json, model, b"[{", 1, None, 0, byref(size), match="not valid JSON")
    fails(E_ARG, lib.realm_chat_template_json, model, b'{"role": "user"}', 1, None, 0, byref(size),
          match="JSON array")
    fails(E_ARG, lib.realm_chat_template, model, roles, contents, 2, 2, None, 0, byref(size), match="unknown bits")
    holes = (C.c_char_p * 2)(b"user", None)
    fails(E_ARG, lib.realm_chat_template, model, roles, holes, 2, 1, None, 0, byref(size), match=r"contents\[1\] is NULL")
    fails(E_ARG, lib.realm_chat_template, model, holes, contents, 2, 1, None, 0, byref(size), match=r"roles\[1\] is NULL")
    bad = (C.c_char_p * 1)(b"\xc3")
    fails(E_ARG, lib.realm_chat_template, model, roles, bad, 1, 1, None, 0, byref(size), match=r"contents\[0\]")


# ---- sampling --------------------------------------------------------------------------------

def test_sampler_equals_python(lib):
    torch.manual_seed(0)
    logits = torch.randn(300) * 3
    buf = f32s(logits)
    history = [5, 7, 7, 42]
    for cfg in [dict(), dict(temperature=0.8, top_k=40, seed=7), dict(temperature=1.1, top_p=0.9, min_p=0.02,
                                                                       repetition_penalty=1.3, seed=123)]:
        params = capi.sampler_params(**cfg)
        sid = c_uint64(0)
        ok(lib.realm_sampler_create, byref(params), byref(sid))
        py = realm.Sampler(realm.SamplerConfig(**cfg))
        tok = c_int32(-1)
        for _ in range(5):
            ok(lib.realm_sampler_sample, sid, buf, 300, i32s(history), len(history), byref(tok))
            assert tok.value == py.sample(logits, history)
        ok(lib.realm_sampler_free, sid)
        fails(E_NOT_FOUND, lib.realm_sampler_free, sid, match=f"sampler {sid.value}")
        fails(E_NOT_FOUND, lib.realm_sampler_sample, sid, buf, 300, None, 0, byref(tok))
    # NULL params: greedy
    sid = c_uint64(0)
    ok(lib.realm_sampler_create, None, byref(sid))
    tok = c_int32()
    ok(lib.realm_sampler_sample, sid, buf, 300, None, 0, byref(tok))
    assert tok.value == int(logits.argmax())
    # a history id outside the vocabulary is refused with the penalty off too
    fails(E_RANGE, lib.realm_sampler_sample, sid, buf, 300, i32s([5, 300]), 2, byref(tok), match="history token id 300")
    fails(E_ARG, lib.realm_sampler_sample, sid, buf, 0, None, 0, byref(tok), match="n_logits is 0")
    penalty, pid = capi.sampler_params(repetition_penalty=1.5), c_uint64()
    ok(lib.realm_sampler_create, byref(penalty), byref(pid))
    fails(E_RANGE, lib.realm_sampler_sample, pid, buf, 300, i32s([300]), 1, byref(tok), match="300")
    ok(lib.realm_sampler_free, pid)
    nan = f32s(torch.tensor([0.0, float("nan")]))
    fails(E_ARG, lib.realm_sampler_sample, sid, nan, 2, None, 0, byref(tok), match="NaN")
    ok(lib.realm_sampler_free, sid)
    ok(lib.realm_sampler_free, 0)
    bad = capi.sampler_params(top_p=2.0)
    fails(E_ARG, lib.realm_sampler_create, byref(bad), byref(sid), match=r"params->top_p=2\.0")
    bad = capi.sampler_params(temperature=-1.0)
    fails(E_ARG, lib.realm_sampler_create, byref(bad), byref(sid), match=r"params->temperature")
    bad = capi.sampler_params()
    bad.struct_size = 8
    fails(E_ARG, lib.realm_sampler_create, byref(bad), byref(sid), match="params->struct_size is 8")
    default = capi.SamplerParams()
    default.struct_size = 0
    lib.realm_sampler_params_default(byref(default))
    expected = capi.sampler_params()
    assert bytes(default) == bytes(expected)
    lib.realm_sampler_params_default(None)                 # a no-op


def test_top_k_equals_python(lib):
    logits = torch.tensor([1.0, 3.0, 3.0, 0.0, -2.0, 7.5])
    buf = f32s(logits)
    for k in (1, 3, 6, 10):
        vals, ids, n = guarded(k, C.c_float), guarded(k, c_int32), c_size_t()
        ok(lib.realm_top_k, buf, 6, k, vals, ids, byref(n))
        ev, ei = realm.top_k_logits(logits, k)
        assert n.value == min(k, 6)
        assert torch.equal(floats(vals, n.value), ev) and ints(ids, n.value) == ei.tolist()
        assert bytes(vals)[4 * n.value:] == b"\xab" * (len(vals) - 4 * n.value)
    n = c_size_t()
    fails(E_ARG, lib.realm_top_k, buf, 6, 0, guarded(1, C.c_float), guarded(1, c_int32), byref(n), match="k is 0")
    fails(E_ARG, lib.realm_top_k, buf, 0, 1, guarded(1, C.c_float), guarded(1, c_int32), byref(n), match="n_logits is 0")


# ---- generation ------------------------------------------------------------------------------

class Collector:
    """An on_token callback: collects (id, piece); returns non-zero after `stop_after` tokens."""

    def __init__(self, lib=None, model=None, stop_after=None):
        self.events, self.lib, self.model, self.stop_after = [], lib, model, stop_after
        self.nested = []
        self.fn = capi.TokenCallback(self)

    def __call__(self, user_data, token_id, piece, piece_len):
        assert user_data == 0xC0FFEE
        text = C.string_at(piece, piece_len).decode()
        assert C.string_at(piece) == text.encode()           # NUL-terminated too
        self.events.append((token_id, text))
        if self.lib is not None and token_id >= 0:         # re-entrant call from the callback
            size = c_size_t()
            self.nested.append(self.lib.realm_token_piece(self.model, token_id, None, 0, byref(size), None))
        return 1 if self.stop_after is not None and len(self.events) >= self.stop_after else 0

    @property
    def text(self):
        return "".join(t for _, t in self.events)


def gen_params(collector=None, max_tokens=8, stop=(), sampler=None):
    p = capi.GenerateParams()
    p.max_tokens = max_tokens
    if collector is not None:
        p.on_token = collector.fn
        p.user_data = 0xC0FFEE
    if stop:
        arr = (C.c_char_p * len(stop))(*[s.encode() for s in stop])
        p.stop = C.cast(arr, C.c_void_p)
        p.n_stop = len(stop)
        p._keep = arr
    if sampler is not None:
        p.sampler = C.pointer(sampler)
    return p


def test_generate_equals_python(lib, model):
    s = new_session(lib, model)
    col = Collector(lib, model)
    res = capi.GenerateResult()
    ok(lib.realm_generate, s, PROMPT.encode(), len(PROMPT), byref(gen_params(col, max_tokens=4)), byref(res))
    py = realm.create_session(model)
    try:
        expected = realm.generate(py, PROMPT, max_tokens=4)
    finally:
        realm.session_free(py)
    assert col.text == expected.text and "Paris" in col.text
    assert [t for t, _ in col.events if t >= 0] == expected.token_ids
    assert (res.finish_reason, res.n_prompt, res.n_generated) == (H["REALM_FINISH_LENGTH"], expected.n_prompt, 4)
    assert col.nested == [OK] * 4
    n = c_uint32()
    ok(lib.realm_session_n_tokens, s, byref(n))
    assert n.value == expected.n_prompt + 4                # every generated token was decoded
    ok(lib.realm_session_free, s)


def test_generate_stop_cancel_tokens_and_limits(lib, model):
    ids = realm.tokenize(model, PROMPT)
    s = new_session(lib, model, 32)
    try:
        col, res = Collector(), capi.GenerateResult()
        ok(lib.realm_generate_tokens, s, i32s(ids), len(ids), byref(gen_params(col, 8, stop=["ari"])), byref(res))
        assert res.finish_reason == H["REALM_FINISH_STOP"] and col.text == " P"
        ok(lib.realm_session_reset, s)
        col, res = Collector(stop_after=2), capi.GenerateResult()
        greedy = capi.sampler_params()
        ok(lib.realm_generate, s, PROMPT.encode(), len(PROMPT), byref(gen_params(col, 8, sampler=greedy)), byref(res))
        assert res.finish_reason == H["REALM_FINISH_CANCELLED"] and len(col.events) == 2 and res.n_generated == 2
        ok(lib.realm_session_reset, s)
        ok(lib.realm_generate, s, PROMPT.encode(), len(PROMPT), byref(gen_params(None, 1)), None)   # result optional
        fails(H["REALM_E_LIMIT"], lib.realm_generate_tokens, s, i32s(list(range(40))), 40, byref(gen_params(None, 1)),
              byref(res), match="does not fit")
        bad = gen_params(None, 1)
        bad.struct_size = 12
        fails(E_ARG, lib.realm_generate, s, b"x", 1, byref(bad), None, match="params->struct_size is 12")
        holes = gen_params(None, 1, stop=["a", "b"])
        holes._keep[1] = None
        fails(E_ARG, lib.realm_generate, s, b"x", 1, byref(holes), None, match=r"params->stop\[1\] is NULL")
        badres = capi.GenerateResult()
        badres.struct_size = 3
        fails(E_ARG, lib.realm_generate, s, b"x", 1, None, byref(badres), match="result->struct_size is 3")
        bad_sampler = capi.sampler_params(top_k=-1)
        fails(E_ARG, lib.realm_generate, s, b"x", 1, byref(gen_params(None, 1, sampler=bad_sampler)), None,
              match=r"params->sampler->top_k")
        fails(E_ARG, lib.realm_generate, s, b"\xff", 1, None, None, match="prompt is not valid UTF-8")
        fails(E_ARG, lib.realm_generate_tokens, s, None, 0, byref(gen_params(None, 1)), None, match="prompt is empty")
        fails(E_RANGE, lib.realm_generate_tokens, s, i32s([10 ** 6]), 1, byref(gen_params(None, 1)), None)
        default = capi.GenerateParams()
        lib.realm_generate_params_default(byref(default))
        assert (default.struct_size, default.max_tokens, default.n_stop) == (C.sizeof(default), 256, 0)
        lib.realm_generate_params_default(None)
    finally:
        ok(lib.realm_session_free, s)
