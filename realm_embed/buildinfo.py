"""Where the C ABI lives, for C hosts: `realm config` / `python -m realm_embed config`.

    cc host.c $(python -m realm_embed config --cflags --libs)
    PKG_CONFIG_PATH=$(python -m realm_embed config --pkgconfigdir) pkg-config --cflags --libs realm

librealm.so and realm.pc lie in this package (built by the install: setup.py); realm.h lies in
the package's include/ in a wheel, or in <source root>/include in an editable install.  Nothing
here imports torch, and nothing loads the library.
"""
from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARY_NAME = "librealm.so"

FLAGS = {
    "--cflags": "compiler flags: -I<includedir>",
    "--libs": "linker flags: -L<libdir> -Wl,-rpath,<libdir> -lrealm",
    "--libdir": "the directory holding librealm.so",
    "--includedir": "the directory holding realm.h",
    "--library": "the path of librealm.so",
    "--header": "the path of realm.h",
    "--pkgconfigdir": "the directory holding realm.pc (for PKG_CONFIG_PATH)",
    "--pkgconfig": "the path of realm.pc",
    "--version": "the library version the header declares (REALM_VERSION)",
    "--abi-version": "the ABI version the header declares (REALM_ABI_VERSION)",
}


class NotBuilt(Exception):
    pass


def library_path() -> Path:
    path = PACKAGE_DIR / LIBRARY_NAME
    if not path.is_file():
        raise NotBuilt(f"{LIBRARY_NAME} is not built (looked for {path}): run `pip install -e .` or `make setup` "
                       "in the source tree, or `python capi/build_capi.py`")
    return path


def lib_dir() -> Path:
    return library_path().parent


def header_path() -> Path:
    candidates = [PACKAGE_DIR / "include" / "realm.h", PACKAGE_DIR.parent / "include" / "realm.h"]
    for path in candidates:
        if path.is_file():
            return path
    raise NotBuilt("realm.h not found (looked for " + " and ".join(map(str, candidates)) + ")")


def include_dir() -> Path:
    return header_path().parent


def pkgconfig_path() -> Path:
    path = PACKAGE_DIR / "realm.pc"
    if not path.is_file():
        raise NotBuilt(f"realm.pc is not built (looked for {path}): run `pip install -e .` or `make setup`")
    return path


def cflags() -> str:
    return f"-I{include_dir()}"


def libs() -> str:
    d = lib_dir()
    return f"-L{d} -Wl,-rpath,{d} -lrealm"


def header_defines() -> dict[str, str]:
    import re
    text = header_path().read_text()
    return dict(re.findall(r"^#define\s+(REALM_\w+)\s+(.+?)\s*$", text, re.M))


def value(flag: str) -> str:
    if flag == "--cflags":
        return cflags()
    if flag == "--libs":
        return libs()
    if flag == "--libdir":
        return str(lib_dir())
    if flag == "--includedir":
        return str(include_dir())
    if flag == "--library":
        return str(library_path())
    if flag == "--header":
        return str(header_path())
    if flag == "--pkgconfigdir":
        return str(pkgconfig_path().parent)
    if flag == "--pkgconfig":
        return str(pkgconfig_path())
    if flag == "--version":
        return header_defines()["REALM_VERSION"].strip('"')
    if flag == "--abi-version":
        return header_defines()["REALM_ABI_VERSION"]
    raise KeyError(flag)


def usage() -> str:
    lines = ["usage: realm config FLAG... (values are printed on one line, space-separated)"]
    lines += [f"  {flag:<15} {text}" for flag, text in FLAGS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0 if argv else 2
    unknown = [a for a in argv if a not in FLAGS]
    if unknown:
        print(f"realm config: unknown flag {unknown[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    try:
        print(" ".join(value(a) for a in argv))
    except NotBuilt as e:
        print(f"realm config: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
