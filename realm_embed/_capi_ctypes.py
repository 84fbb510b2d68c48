"""A ctypes binding of librealm.so generated from include/realm.h (structs and prototypes).

The harness of tests/test_capi*.py and of bench/: it reaches the library exactly as a foreign
host does.  Not an API: from Python, `import realm_embed`.  Needs the source tree (it reads the
header with capi/header.py).

    from realm_embed import _capi_ctypes as capi
    lib = capi.load()
    err = capi.Error()
    rc = lib.realm_init(ctypes.byref(err))
"""
from __future__ import annotations

import ctypes
import importlib.util
import re
import sys
from pathlib import Path

from . import buildinfo

ROOT = Path(__file__).resolve().parent.parent


def header():
    """capi/header.py of the source tree (the header parser the build uses)."""
    name = "_realm_header"
    if name not in sys.modules:
        path = ROOT / "capi" / "header.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


_SCALARS = {
    "int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32, "int64_t": ctypes.c_int64,
    "uint64_t": ctypes.c_uint64, "size_t": ctypes.c_size_t, "double": ctypes.c_double,
    "float": ctypes.c_float, "char": ctypes.c_char, "void": None,
}

# int32_t (*)(void *user_data, int32_t token_id, const char *piece, size_t piece_len)
TokenCallback = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_size_t)

_STRUCT_NAMES = {
    "realm_error": "Error", "realm_model_info": "ModelInfo", "realm_tensor_info": "TensorInfo",
    "realm_sampler_params": "SamplerParams", "realm_generate_params": "GenerateParams",
    "realm_generate_result": "GenerateResult", "realm_session_params": "SessionParams",
}
STRUCTS: dict[str, type] = {}


def ctype(text: str):
    """The ctypes type of a C type as capi/header.py writes it."""
    text = text.replace("const ", "").strip()
    m = re.fullmatch(r"(.+?)\s*\[(\d+)\]", text)
    if m:
        return ctype(m.group(1)) * int(m.group(2))
    if text == "realm_token_callback":
        return TokenCallback
    if text.endswith("*"):
        inner = text[:-1].strip()
        if inner == "char":
            return ctypes.c_char_p
        if inner in STRUCTS:
            return ctypes.POINTER(STRUCTS[inner])
        return ctypes.c_void_p
    if text in STRUCTS:
        return STRUCTS[text]
    return _SCALARS[text]


def _make_structs() -> None:
    for cname, fields in header().structs().items():
        cls = type(_STRUCT_NAMES.get(cname, cname), (ctypes.Structure,), {})
        STRUCTS[cname] = cls
        cls._fields_ = [(name, ctype(t)) for name, t in fields]
        if fields and fields[0][0] == "struct_size":        # versioned: set it like the _INIT macros
            def __init__(self, *args, **kw):
                ctypes.Structure.__init__(self, *args, **kw)
                if not self.struct_size:
                    self.struct_size = ctypes.sizeof(self)
            cls.__init__ = __init__
        globals()[cls.__name__] = cls


_make_structs()
DEFINES = header().int_defines()


def load(path=None) -> ctypes.CDLL:
    """librealm.so with every function of the header typed (restype, argtypes)."""
    lib = ctypes.CDLL(str(path or buildinfo.library_path()))
    for f in header().functions():
        fn = getattr(lib, f.name)
        fn.restype = ctype(f.result)
        fn.argtypes = [ctype(p.ctype) for p in f.params]
    return lib


def sampler_params(**fields):
    p = STRUCTS["realm_sampler_params"]()
    p.top_k, p.temperature, p.top_p, p.min_p, p.repetition_penalty = 0, 0.0, 1.0, 0.0, 1.0
    p.seed = DEFINES["REALM_SEED_RANDOM"]
    for k, v in fields.items():
        setattr(p, k, v)
    return p
