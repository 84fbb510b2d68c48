"""Builds librealm.so, the C ABI library, as part of every install; metadata is in pyproject.toml.

`pip install -e .` (make setup) puts realm_embed/librealm.so and realm_embed/realm.pc into the
source tree; a wheel carries them in the package, with include/realm.h copied to
realm_embed/include/.  The library itself is described in capi/build_capi.py (which
`python capi/build_capi.py` also runs by hand).
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


class BuildExt(build_ext):
    """build_ext that names the library librealm.so (not an extension-module name) and generates
    its C source with cffi just before compiling it."""

    def get_ext_filename(self, fullname):
        if fullname == EXT_NAME:
            return os.path.join("realm_embed", "librealm.so")
        if fullname == EXT_NAME.rsplit(".", 1)[1]:
            return "librealm.so"
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if ext.name == EXT_NAME:
            capi = _capi()
            generated = capi.make_ffi().distutils_extension(tmpdir=os.path.join(self.build_temp, "capi"),
                                                            verbose=False)
            for attr in ("sources", "include_dirs", "define_macros", "libraries", "library_dirs",
                         "extra_compile_args", "extra_link_args", "depends"):
                setattr(ext, attr, list(getattr(generated, attr) or []))
        super().build_extension(ext)

    def copy_file(self, infile, outfile, *args, **kwargs):
        """The in-place copy of the library is atomic: a process that has the old one mapped
        (a test run while `make setup` rebuilds) keeps it instead of crashing."""
        if not str(outfile).endswith("librealm.so"):
            return super().copy_file(infile, outfile, *args, **kwargs)
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
    ext_modules=[Extension(EXT_NAME, sources=["capi/realm_capi.c"])],
    cmdclass={"build_ext": BuildExt},
)
