"""Helpers for the wasm tests: a proxy guest that re-exports every realm import (so a test can
call any import with any arguments, hostile ones included), and guest-memory helpers."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from realm_embed.wasm.imports import IMPORTS

GUESTS = Path(__file__).resolve().parent / "wasm"


def proxy_wat(pages: int = 8, imported_memory: bool = False) -> str:
    """A guest exporting one function per import, forwarding its arguments unchanged."""
    out = ["(module"]
    for name, (sig, _) in IMPORTS.items():
        params, results = sig.wasm()
        out.append(f'  (import "realm" "{name}" (func ${name} (param {" ".join(params)}) (result {" ".join(results)})))')
    out.append(f'  (import "env" "memory" (memory {pages}))' if imported_memory else f'  (memory (export "memory") {pages})')
    for name, (sig, _) in IMPORTS.items():
        params, results = sig.wasm()
        gets = " ".join(f"local.get {i}" for i in range(len(params)))
        out.append(f'  (func (export "{name}") (param {" ".join(params)}) (result {" ".join(results)}) {gets} call ${name})')
    out.append(")")
    return "\n".join(out)


def with_abi(wasm: bytes, version: int) -> bytes:
    """wasm plus a realm_abi custom section, as realm_guest.h writes it."""
    def leb(n):
        b = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            b.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(b)
    name = b"realm_abi"
    body = leb(len(name)) + name + f"realm-guest-abi {version};".encode()
    return wasm + b"\x00" + leb(len(body)) + body


def u32(x: int) -> int:
    """A Python int as the i32 argument wasmtime-py accepts (two's complement)."""
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= 1 << 31 else x


class Proxy:
    """t.call on the proxy guest with unsigned arguments, plus memory access by address."""

    def __init__(self, tenant):
        self.t = tenant

    def __getattr__(self, name):
        return lambda *args: self.t.call(name, *[u32(a) if isinstance(a, int) and abs(a) < 1 << 33 else a for a in args])

    def write(self, ptr: int, data: bytes) -> None:
        self.t.memory.write(self.t.store, data, ptr)

    def read(self, ptr: int, n: int) -> bytes:
        return bytes(self.t.memory.read(self.t.store, ptr, ptr + n))

    def i32s(self, ptr: int, n: int) -> list[int]:
        return np.frombuffer(self.read(ptr, 4 * n), dtype="<i4").tolist()

    def f32s(self, ptr: int, n: int) -> np.ndarray:
        return np.frombuffer(self.read(ptr, 4 * n), dtype="<f4").copy()

    def u32(self, ptr: int) -> int:
        return struct.unpack("<I", self.read(ptr, 4))[0]

    def i64(self, ptr: int) -> int:
        return struct.unpack("<q", self.read(ptr, 8))[0]

    def put_i32s(self, ptr: int, values) -> None:
        self.write(ptr, np.asarray(values, dtype="<i4").tobytes())

    def put_f32s(self, ptr: int, values) -> None:
        self.write(ptr, np.asarray(values, dtype="<f4").tobytes())
