"""Read include/realm.h, the single source of truth of the C ABI.

The block between the ``realm:cdef-begin`` and ``realm:cdef-end`` markers holds only typedefs,
structs, integer #defines and ``REALM_API`` function declarations.  The build feeds its types
and constants to cffi and derives the ``extern "Python"`` twins of the functions from it; the
tests read the result codes and every function's signature from it.  Nothing is repeated.

Standalone on purpose (no import of realm_embed, which imports torch): setup.py, the build
script and the tests load it by path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "include" / "realm.h"

# Functions implemented in C alone (they never start Python, or start it themselves).
PURE_C = frozenset({
    "realm_init", "realm_version", "realm_version_number", "realm_abi_version", "realm_errstr",
    "realm_last_error", "realm_sampler_params_default", "realm_generate_params_default",
    "realm_session_params_default",
})

_PARSE_PRELUDE = """
typedef unsigned long size_t; typedef signed char int8_t; typedef unsigned char uint8_t;
typedef short int16_t; typedef unsigned short uint16_t; typedef int int32_t;
typedef unsigned int uint32_t; typedef long long int64_t; typedef unsigned long long uint64_t;
"""


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str          # the declaration without the name, e.g. "const char *const *"
    decl: str           # the whole parameter, e.g. "const char *const *roles"


@dataclass(frozen=True)
class Function:
    name: str
    result: str         # e.g. "int32_t", "const char *"
    params: tuple[Param, ...]
    decl: str           # C declaration without REALM_API and without the trailing ';'

    @property
    def fallible(self) -> bool:
        """Takes the trailing `realm_error *err` and returns a result code."""
        return bool(self.params) and self.params[-1].decl.replace(" ", "") == "realm_error*err"


def read(path: Path = HEADER) -> str:
    return Path(path).read_text()


def block(text: str | None = None) -> str:
    """The text between the cdef markers (the marker comment lines excluded)."""
    text = read() if text is None else text
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("/* ---- realm:cdef-begin"))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("/* ---- realm:cdef-end"))
    body = "\n".join(lines[start:end])
    return strip_comments(body).strip() + "\n"


def strip_comments(src: str) -> str:
    src = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), src, flags=re.S)
    return re.sub(r"//[^\n]*", "", src)


def defines(text: str | None = None) -> dict[str, str]:
    """#define NAME VALUE lines of the whole header (comments removed), as text."""
    text = strip_comments(read() if text is None else text)
    out = {}
    for m in re.finditer(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)[ \t]+([^\n]+)$", text, re.M):
        out[m.group(1)] = m.group(2).strip()
    return out


def int_defines(text: str | None = None) -> dict[str, int]:
    """The #defines whose value is a plain integer literal (result codes, flags, sizes)."""
    out = {}
    for name, value in defines(text).items():
        m = re.fullmatch(r"(-?)\s*(0[xX][0-9a-fA-F]+|\d+)[uUlL]*", value)
        if m:
            out[name] = int(m.group(1) + m.group(2), 0)
    return out


def cdef_types(blk: str | None = None) -> str:
    """The block for cffi's cdef: types and constants, function declarations removed."""
    blk = block() if blk is None else blk
    return re.sub(r"REALM_API[^;]*;", "", blk, flags=re.S)


def functions(blk: str | None = None) -> list[Function]:
    """Every REALM_API function of the block, in header order."""
    from pycparser import c_ast, c_generator, c_parser

    blk = block() if blk is None else blk
    src = "\n".join(ln for ln in blk.splitlines() if not ln.lstrip().startswith("#"))
    src = src.replace("REALM_API", "")
    ast = c_parser.CParser().parse(_PARSE_PRELUDE + src, filename="realm.h")
    gen = c_generator.CGenerator()
    out = []
    for node in ast.ext:
        if not (isinstance(node, c_ast.Decl) and isinstance(node.type, c_ast.FuncDecl)):
            continue
        params = []
        for p in (node.type.args.params if node.type.args else []):
            if isinstance(p, c_ast.Typename):        # f(void)
                continue
            decl = gen.visit(p)
            ctype = _without_name(gen, p)
            params.append(Param(p.name, ctype, decl))
        result = _without_name(gen, c_ast.Typename(None, [], None, node.type.type))
        out.append(Function(node.name, result, tuple(params), gen.visit(node)))
    return out


def _without_name(gen, node) -> str:
    """C text of a declaration's type with the declarator name removed."""
    import copy
    from pycparser import c_ast

    node = copy.deepcopy(node)
    t = node.type
    while not isinstance(t, c_ast.TypeDecl):
        t = t.type
    t.declname = None
    text = gen.visit(node.type if isinstance(node, (c_ast.Decl, c_ast.Typename)) else node)
    return re.sub(r"\s+", " ", text).replace(" *", " *").strip()


def python_twins(funcs: list[Function] | None = None) -> list[tuple[Function, str]]:
    """(function, declaration of its extern "Python" twin) for each function backed by Python.

    The twin is named _py_<name> and takes the same parameters without the trailing
    realm_error *err: the C wrapper owns error reporting, the twin returns a result code and
    sets the message with _realm_set_error.
    """
    funcs = functions() if funcs is None else funcs
    out = []
    for f in funcs:
        if f.name in PURE_C:
            continue
        if not f.fallible or f.result != "int32_t":
            raise ValueError(f"{f.name}: a Python-backed function must return int32_t and end with realm_error *err")
        params = ", ".join(p.decl for p in f.params[:-1]) or "void"
        out.append((f, f"int32_t _py_{f.name}({params})"))
    return out


def structs(blk: str | None = None) -> dict[str, list[tuple[str, str]]]:
    """typedef'd structs of the block: name -> [(field, C type text), ...] in order."""
    from pycparser import c_ast, c_generator, c_parser

    blk = block() if blk is None else blk
    src = "\n".join(ln for ln in blk.splitlines() if not ln.lstrip().startswith("#"))
    ast = c_parser.CParser().parse(_PARSE_PRELUDE + src.replace("REALM_API", ""), filename="realm.h")
    gen = c_generator.CGenerator()
    out = {}
    for node in ast.ext:
        if isinstance(node, c_ast.Typedef) and isinstance(node.type.type, c_ast.Struct) and node.type.type.decls:
            out[node.name] = [(d.name, _without_name(gen, d)) for d in node.type.type.decls]
    return out
