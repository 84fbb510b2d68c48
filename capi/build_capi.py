"""Build librealm.so: a cffi embedding of CPython behind the hand-written C ABI of include/realm.h.

    python capi/build_capi.py            # -> realm_embed/librealm.so (what `pip install -e .` does)

The pattern (shared/design/embedding.md): every exported function is C, in capi/realm_capi.c; the
Python side sits behind static extern "Python" twins (_py_realm_*), implemented in
realm_embed/_capi_impl.py.  Nothing is declared twice: the types, constants and function
signatures come from the header's cdef block (capi/header.py), the twins are derived from them.

setup.py calls make_ffi() / extension_kwargs() from its build_ext, so `pip install` and this
script build the same library.
"""
from __future__ import annotations

import importlib.util
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
INCLUDE = ROOT / "include"
PREAMBLE = HERE / "realm_capi.c"
MODULE = "_realm_capi"                       # the cffi module name inside the library
EXT_NAME = "realm_embed.librealm"           # setuptools' name for it; the file is librealm.so
LIB_FILE = "librealm.so"


def _header():
    """capi/header.py, loaded by path (capi/ is not a package)."""
    if "_realm_header" not in sys.modules:
        spec = importlib.util.spec_from_file_location("_realm_header", HERE / "header.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["_realm_header"] = mod          # dataclasses look their module up
        spec.loader.exec_module(mod)
    return sys.modules["_realm_header"]


# Run by cffi the first time the library is entered; failures are reported to the C side
# (the message of REALM_E_INIT) and re-raised so cffi_start_python() fails.
INIT_CODE = '''\
from _realm_capi import ffi, lib
try:
    from realm_embed import _capi_impl
    _capi_impl.install(ffi, lib)
except BaseException as _exc:
    lib._realm_init_failed(("%s: %s" % (type(_exc).__name__, _exc)).encode("utf-8", "replace")[:900])
    raise
'''

# C helpers the Python side calls (static functions of realm_capi.c; not exported).
INTERNAL_CDEF = """
void _realm_set_error(const char *message);
void _realm_init_failed(const char *reason);
int _realm_started_python(void);
"""


def sources() -> list[Path]:
    """Every input of the library: a change to any of them needs a rebuild."""
    return [INCLUDE / "realm.h", PREAMBLE, HERE / "header.py", Path(__file__).resolve()]


def make_ffi():
    """The cffi builder: cdef from the header, twins derived from it, preamble = realm_capi.c."""
    import cffi

    h = _header()
    blk = h.block()
    twins = h.python_twins(h.functions(blk))
    ffi = cffi.FFI()
    ffi.cdef(h.cdef_types(blk))
    ffi.cdef("".join(f'extern "Python" {decl};\n' for _, decl in twins))
    ffi.cdef(INTERNAL_CDEF)
    ffi.embedding_api("")                   # still an embedding library; the ABI is in the preamble
    ffi.embedding_init_code(INIT_CODE)
    forward = "".join(f"static {decl};\n" for _, decl in twins)
    preamble = ('#include "realm.h"\n'
                "/* forward declarations of the extern \"Python\" twins (generated from realm.h) */\n"
                + forward + f'#line 1 "{PREAMBLE}"\n' + PREAMBLE.read_text())
    ffi.set_source(MODULE, preamble, **extension_kwargs())
    return ffi


def extension_kwargs() -> dict:
    libdir = sysconfig.get_config_var("LIBDIR")
    build_python = sys.executable            # the venv's python (not resolved: that would be the base)
    return dict(
        include_dirs=[str(INCLUDE)],
        define_macros=[("REALM_BUILD_PYTHON", _c_string(build_python))],
        extra_compile_args=["-fvisibility=hidden", "-std=gnu11", "-Wall", "-Wno-unused-function", "-Wno-format-truncation"],
        extra_link_args=[f"-Wl,-rpath,{libdir}", "-Wl,--no-undefined"] if libdir else [],
        depends=[str(p) for p in sources()],
    )


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pkgconfig_text(version: str, include_rel: str) -> str:
    """realm.pc, relocatable: paths are relative to the .pc file, which lies next to librealm.so."""
    return (
        "libdir=${pcfiledir}\n"
        f"includedir=${{pcfiledir}}/{include_rel}\n\n"
        "Name: realm\n"
        "Description: realm-embed C ABI (librealm.so: LLM inference in an embedded CPython)\n"
        f"Version: {version}\n"
        "Cflags: -I${includedir}\n"
        "Libs: -L${libdir} -Wl,-rpath,${libdir} -lrealm\n"
    )


def header_version() -> str:
    return _header().defines()["REALM_VERSION"].strip('"')


def build(target_dir: Path = ROOT / "realm_embed", tmpdir: Path = ROOT / "build" / "capi",
          verbose: bool = False) -> Path:
    """Compile librealm.so into target_dir (and realm.pc beside it) without setuptools' install."""
    ffi = make_ffi()
    tmpdir.mkdir(parents=True, exist_ok=True)
    out = Path(ffi.compile(tmpdir=str(tmpdir), target=LIB_FILE, verbose=verbose))
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / LIB_FILE
    tmp = final.with_suffix(".so.tmp")
    tmp.write_bytes(out.read_bytes())
    tmp.chmod(0o755)
    tmp.replace(final)                      # atomic: a running process keeps its old mapping
    (target_dir / "realm.pc").write_text(pkgconfig_text(header_version(), "../include"))
    return final


if __name__ == "__main__":
    print(build(verbose="-v" in sys.argv))
