"""Misuse of every function of the C ABI, driven by the header's own declarations.

* NULL for each required pointer argument, one at a time: REALM_E_ARG naming that argument.
* An unknown id for each model / session / sampler argument: REALM_E_NOT_FOUND naming the id.
* A Python host without the package: REALM_E_INIT from every call, nothing on stderr.
"""
from __future__ import annotations

import ctypes as C
import os
import subprocess
import sys
from ctypes import byref, c_uint64

import pytest

from realm_embed import _capi_ctypes as capi
from realm_embed import buildinfo

H = capi.DEFINES
FUNCS = [f for f in capi.header().functions() if f.fallible]
OPTIONAL = {"err", "params", "result"}          # pointers the header marks optional
UNKNOWN = 0xDEADBEEF


@pytest.fixture(scope="module")
def lib():
    lib = capi.load()
    assert lib.realm_init(None) == H["REALM_OK"], lib.realm_last_error()
    return lib


@pytest.fixture(scope="module")
def ids(lib):
    model = c_uint64()
    assert lib.realm_model_store_default(0, byref(model), None) == 0
    session, sampler = c_uint64(), c_uint64()
    assert lib.realm_session_create(model, 64, byref(session), None) == 0
    assert lib.realm_sampler_create(None, byref(sampler), None) == 0
    yield {"model": model.value, "session": session.value, "sampler": sampler.value}
    lib.realm_sampler_free(sampler, None)
    lib.realm_session_free(session, None)
    lib.realm_model_remove(model, None)


BIG = 1 << 20
COUNTS = {"n_embd": 576, "n_messages": 1, "n_stop": 0}
TEXTS = {"path": b"/nonexistent.gguf", "name": b"output_norm.weight", "messages_json": b"[]"}


def valid_args(f, ids, keep):
    """Arguments that pass every check but the one under test (err excluded)."""
    args = []
    for p in f.params[:-1]:
        t = p.ctype
        if p.name in ("model", "session", "sampler"):
            args.append(ids[p.name])
        elif t == "uint64_t":
            args.append(0)
        elif t in ("uint32_t", "int32_t", "size_t"):
            args.append(COUNTS.get(p.name, BIG if p.name.endswith("_cap") else 1))
        elif t == "const char *":
            args.append(TEXTS.get(p.name, b"x"))
        elif t == "const char * const *":
            arr = (C.c_char_p * 1)(b"user")
            keep.append(arr)
            args.append(arr)
        elif p.name in OPTIONAL:
            args.append(None)
        elif isinstance(getattr(capi.ctype(t), "_type_", None), type) and \
                issubclass(capi.ctype(t)._type_, C.Structure):           # a versioned struct
            obj = capi.ctype(t)._type_()
            keep.append(obj)
            args.append(byref(obj))
        else:                                   # a caller array or output: zeroed, large enough
            buf = (C.c_char * (4 * BIG))()
            keep.append(buf)
            args.append(buf)
    return args


NULL_CASES = [(f, i) for f in FUNCS for i, p in enumerate(f.params[:-1])
              if (p.ctype.endswith("*") and p.name not in OPTIONAL)]


@pytest.mark.parametrize("f,index", NULL_CASES, ids=[f"{f.name}:{f.params[i].name}" for f, i in NULL_CASES])
def test_null_pointer_is_an_argument_error(lib, ids, f, index):
    keep = []
    args = valid_args(f, ids, keep)
    args[index] = None
    err = capi.Error()
    rc = getattr(lib, f.name)(*args, byref(err))
    name = f.params[index].name
    assert rc == H["REALM_E_ARG"], (rc, err.message)
    assert err.message.decode().startswith(f"{f.name}: {name} is NULL"), err.message


ID_CASES = [(f, i) for f in FUNCS for i, p in enumerate(f.params[:-1]) if p.name in ("model", "session", "sampler")]


@pytest.mark.parametrize("f,index", ID_CASES, ids=[f.name for f, _ in ID_CASES])
def test_unknown_id_is_not_found(lib, ids, f, index):
    keep = []
    args = valid_args(f, ids, keep)
    args[index] = UNKNOWN
    err = capi.Error()
    rc = getattr(lib, f.name)(*args, byref(err))
    assert rc == H["REALM_E_NOT_FOUND"], (rc, err.message)
    message = err.message.decode()
    assert message.startswith(f"{f.name}: ") and (str(UNKNOWN) in message or f"{UNKNOWN:#x}" in message), message


def test_every_pointer_argument_is_covered():
    """Every pointer parameter is either swept above or documented optional."""
    for f in FUNCS:
        for p in f.params:
            if p.ctype.endswith("*"):
                assert p.name in OPTIONAL or any(g is f and g.params[i] is p for g, i in NULL_CASES), (f.name, p.name)


def test_optional_pointers(lib, ids):
    """err, params and result may be NULL (generation with NULL params: the defaults)."""
    s = c_uint64()
    assert lib.realm_session_create(ids["model"], 8, byref(s), None) == 0
    prompt = b"The capital of France is"               # 5 tokens; the context ends it after 3 more
    assert lib.realm_generate(s, prompt, len(prompt), None, None, None) == 0, lib.realm_last_error()
    n = C.c_uint32()
    assert lib.realm_session_n_tokens(s, byref(n), None) == 0 and n.value == 8
    assert lib.realm_session_free(s, None) == 0


def _base_python():
    """A Python of the same build without the package (the pyenv base of the venv)."""
    base = getattr(sys, "_base_executable", None)
    if not base or os.path.realpath(base) == os.path.realpath(sys.executable):
        candidates = [os.path.join(sys.base_prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}")]
    else:
        candidates = [base]
    for c in candidates:
        if os.path.isfile(c):
            probe = subprocess.run([c, "-c", "import realm_embed"], capture_output=True, cwd="/")
            if probe.returncode != 0:
                return c
    pytest.skip("no Python of this build without realm_embed found")


def test_python_host_without_the_package_gets_init_errors():
    script = f"""
import ctypes, sys
lib = ctypes.CDLL({str(buildinfo.library_path())!r})
lib.realm_last_error.restype = ctypes.c_char_p
out = ctypes.c_uint64(7)
codes = [lib.realm_init(None), lib.realm_model_store_default(ctypes.c_uint64(0), ctypes.byref(out), None),
         lib.realm_init(None)]
print(codes, out.value, lib.realm_last_error().decode())
"""
    r = subprocess.run([_base_python(), "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("[-2, -2, -2] 7 realm_init: the runtime failed to start: the host's Python "
                               "cannot load realm-embed: ModuleNotFoundError"), r.stdout
