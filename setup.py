"""Builds librealm.so, the C ABI library, as part of every install; metadata is in pyproject.toml.

`pip install -e .` (make setup) puts realm_embed/librealm.so and realm_embed/realm.pc into the
source tree; a wheel carries them in the package, with include/realm.h copied to
realm_embed/include/.  The library itself is described in capi/build_capi.py (which
`python capi/build_capi.py` also runs by hand).

It also builds realm_embed/_cpu_decode.so, fast mode's CPU decode kernels (realm_embed/csrc/,
loaded with ctypes by realm_embed/cpu_kernels.py).  That one is optional: if it does not compile,
the install goes on and fast mode runs its torch path.
"""
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def _capi():
    name = "_realm_build_capi"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "capi" / "build_capi.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


EXT_NAME = "realm_embed.librealm"
CPU_NAME = "realm_embed._cpu_decode"
# Plain C, no Python API.  No -march: the kernels pick AVX-512 VNNI / AVX2 / scalar at run time.
# -fopenmp-simd only honours `#pragma omp simd` (no OpenMP runtime: torch has its own).
CPU_EXT = Extension(CPU_NAME, sources=["realm_embed/csrc/cpu_decode.c"], depends=["realm_embed/csrc/rd_kernels.h"],
                    extra_compile_args=["-O3", "-std=gnu11", "-fopenmp-simd", "-fvisibility=hidden", "-w"],
                    extra_link_args=["-lpthread", "-lm"])
LIBS = {EXT_NAME: "librealm.so", CPU_NAME: "_cpu_decode.so"}


class BuildExt(build_ext):
    """build_ext that names the library librealm.so (not an extension-module name) and generates
    its C source with cffi just before compiling it."""

    def get_ext_filename(self, fullname):
        for name, lib in LIBS.items():
            if fullname == name:
                return os.path.join("realm_embed", lib)
            if fullname == name.rsplit(".", 1)[1]:
                return lib
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if ext.name == EXT_NAME:
            capi = _capi()
            generated = capi.make_ffi().distutils_extension(tmpdir=os.path.join(self.build_temp, "capi"),
                                                            verbose=False)
            for attr in ("sources", "include_dirs", "define_macros", "libraries", "library_dirs",
                         "extra_compile_args", "extra_link_args", "depends"):
                setattr(ext, attr, list(getattr(generated, attr) or []))
        if ext.name == CPU_NAME:
            try:
                super().build_extension(ext)
            except Exception as e:          # noqa: BLE001  no compiler, old gcc...: torch path instead
                print(f"note: CPU decode kernels not built ({type(e).__name__}); fast mode uses torch")
            return
        super().build_extension(ext)

    def copy_file(self, infile, outfile, *args, **kwargs):
        """The in-place copy of the library is atomic: a process that has the old one mapped
        (a test run while `make setup` rebuilds) keeps it instead of crashing."""
        if not str(outfile).endswith(tuple(LIBS.values())):
            return super().copy_file(infile, outfile, *args, **kwargs)
        if not os.path.exists(infile):          # the optional CPU kernels did not build
            return outfile, 0
        tmp = f"{outfile}.tmp"
        shutil.copyfile(infile, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, outfile)
        return outfile, 1

    def run(self):
        inplace = self.inplace                  # build_ext.run builds in build_lib, then copies back
        super().run()
        capi = _capi()
        if inplace:                             # editable: the header stays in <root>/include
            pkg = Path(self.get_finalized_command("build_py").get_package_dir("realm_embed")).resolve()
            include_rel = "../include"
        else:                                   # wheel: ship the header in the package
            pkg = Path(self.build_lib) / "realm_embed"
            (pkg / "include").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(capi.INCLUDE / "realm.h", pkg / "include" / "realm.h")
            include_rel = "include"
        (pkg / "realm.pc").write_text(capi.pkgconfig_text(capi.header_version(), include_rel))


setup(
    ext_modules=[Extension(EXT_NAME, sources=["capi/realm_capi.c"]), CPU_EXT],
    cmdclass={"build_ext": BuildExt},
)
