"""The guest ABI: its version, the import table's signatures, and the load-time check.

Imports live in module "realm".  A guest also imports its memory as env.memory (the reference
guests do: a host that cannot cap an exported memory, like Node's, can then cap it) or exports
it as "memory".  The ABI version a guest was built for is in its custom section "realm_abi"
("realm-guest-abi N;" once per object file, written by realm_guest.h).
"""
from __future__ import annotations

from dataclasses import dataclass

import wasmtime

from .errors import GuestAbiError

ABI_VERSION = 1          # REALM_GUEST_ABI_VERSION in bindings/wasm/realm_guest.h
MAX_MODULE_BYTES = 64 << 20

# parameter kinds: h handle (i32), i signed i32, u unsigned i32, p pointer (i32), I i64, f f32
_WASM = {"h": "i32", "i": "i32", "u": "i32", "p": "i32", "I": "i64", "f": "f32"}


@dataclass(frozen=True)
class Signature:
    params: str       # kinds, e.g. "huupuupu"
    result: str       # "i" (i32 result code) or "I" (i64)

    def wasm(self) -> tuple[list[str], list[str]]:
        return [_WASM[k] for k in self.params], [_WASM[self.result]]

    def functype(self) -> wasmtime.FuncType:
        vt = {"i32": wasmtime.ValType.i32(), "i64": wasmtime.ValType.i64(), "f32": wasmtime.ValType.f32()}
        params, results = self.wasm()
        return wasmtime.FuncType([vt[p] for p in params], [vt[r] for r in results])


def _sig_text(params, results) -> str:
    return f"({', '.join(params)}) -> ({', '.join(results)})"


def custom_sections(wasm: bytes, name: str) -> list[bytes]:
    """Payloads of the custom sections called `name` (a minimal reader of the binary format)."""
    def leb(i: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if i >= len(wasm) or shift > 28:
                raise GuestAbiError("not a WebAssembly module: truncated section header")
            b = wasm[i]
            value |= (b & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if not b & 0x80:
                return value, i
    if wasm[:4] != b"\0asm":
        raise GuestAbiError("not a WebAssembly module (no \\0asm magic): a realm guest is a .wasm file")
    out, i = [], 8
    while i < len(wasm):
        sid, i = wasm[i], i + 1
        size, i = leb(i)
        end = i + size
        if end > len(wasm):
            raise GuestAbiError("not a WebAssembly module: a section runs past the end")
        if sid == 0:
            n, j = leb(i)
            if wasm[j:j + n] == name.encode():
                out.append(bytes(wasm[j + n:end]))
        i = end
    return out


def guest_abi(wasm: bytes) -> int | None:
    """The ABI version recorded by realm_guest.h, or None if the guest did not record one."""
    versions = set()
    for payload in custom_sections(wasm, "realm_abi"):
        for record in payload.decode("ascii", "replace").split(";"):
            if record.strip():
                parts = record.split()
                if len(parts) != 2 or parts[0] != "realm-guest-abi" or not parts[1].isdigit():
                    raise GuestAbiError(f"malformed realm_abi record {record!r}")
                versions.add(int(parts[1]))
    if len(versions) > 1:
        raise GuestAbiError(f"the guest's objects were built for different ABIs {sorted(versions)}")
    return versions.pop() if versions else None


@dataclass(frozen=True)
class GuestModule:
    """A compiled guest, checked against the host's imports; shareable by any number of tenants."""
    module: wasmtime.Module
    abi: int | None
    memory_import: wasmtime.MemoryType | None   # None: the guest exports "memory"
    exports: frozenset
    size: int


def check_module(module: wasmtime.Module, wasm: bytes, imports: dict[str, Signature]) -> GuestModule:
    """Refuse, with a sentence, a module whose imports this host does not provide exactly."""
    abi = guest_abi(wasm)
    built = f"guest built for ABI {abi if abi is not None else 'unknown'}, host ABI {ABI_VERSION}"
    memory_import = None
    for imp in module.imports:
        ty = imp.type
        if imp.module == "realm":
            sig = imports.get(imp.name)
            if sig is None:
                raise GuestAbiError(f"unknown import realm.{imp.name} ({built})")
            if not isinstance(ty, wasmtime.FuncType):
                raise GuestAbiError(f"import realm.{imp.name} must be a function ({built})")
            have = ([str(p) for p in ty.params], [str(r) for r in ty.results])
            want = sig.wasm()
            if have != want:
                raise GuestAbiError(f"import realm.{imp.name} has type {_sig_text(*have)}, the host's is "
                                    f"{_sig_text(*want)} ({built})")
        elif (imp.module, imp.name) == ("env", "memory") and isinstance(ty, wasmtime.MemoryType):
            if ty.is_64 or ty.is_shared or ty.page_size != 65536:
                raise GuestAbiError(f"env.memory must be a 32-bit unshared memory of 64 KiB pages ({built})")
            memory_import = ty
        else:
            raise GuestAbiError(f"unknown import {imp.module}.{imp.name}: a realm guest imports only module "
                                f"'realm' and env.memory ({built})")
    exports = {e.name: e.type for e in module.exports}
    if memory_import is None and not isinstance(exports.get("memory"), wasmtime.MemoryType):
        raise GuestAbiError("the guest neither imports env.memory nor exports a memory named 'memory'")
    return GuestModule(module, abi, memory_import, frozenset(exports), len(wasm))
