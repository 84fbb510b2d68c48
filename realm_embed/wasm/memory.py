"""Bounds-checked access to one guest's linear memory, for the duration of one import call.

Every guest pointer and length is an unsigned 32-bit value; the byte span is computed with
Python integers (no wrap at any width) and checked against the memory's size read afresh for
every import call, because memory.grow may move and resize the memory between calls.  (Within
one import call it cannot change: the guest is suspended in the call, and the host never grows
guest memory, so the size and base are read once per call.)  A span
outside the memory raises GuestFault, which traps the guest.  Data is always copied in and out:
no view of guest memory outlives the access, and buffers need no alignment.

The base address is cached per memory (BaseCache) together with the size it was read at:
wasmtime moves a linear memory only when memory.grow resizes it, and a memory never shrinks, so
an unchanged size (read afresh every call) means an unchanged base; any other size re-reads it.
"""
from __future__ import annotations

import ctypes

import numpy as np
import torch

from .errors import GuestFault

MASK32 = 0xFFFFFFFF
_F32 = torch.float32


class BaseCache:
    """One memory's host base address, with the size it was read at (see the module doc): one
    (size, base) tuple, replaced whole, so a reader never pairs one size with another's base."""
    __slots__ = ("entry",)

    def __init__(self):
        self.entry = (None, None)


class GuestMemory:
    __slots__ = ("_mem", "_store", "_fn", "_size", "_base", "_cache")

    def __init__(self, mem, store, fn: str, cache: BaseCache | None = None):
        self._mem, self._store, self._fn, self._cache = mem, store, fn, cache
        self._size = self._base = None

    def size(self) -> int:
        if self._size is None:
            self._size = self._mem.data_len(self._store)
        return self._size

    def _base_address(self) -> int:
        c, size = self._cache, self.size()
        if c is not None:
            cached_size, base = c.entry
            if cached_size == size:
                self._base = base
                return base
        self._base = ctypes.addressof(self._mem.data_ptr(self._store).contents)
        if c is not None:
            c.entry = (size, self._base)
        return self._base

    def span(self, ptr: int, count: int, elsize: int, what: str) -> int:
        """Check [ptr, ptr + count * elsize) lies in memory; return the host address of ptr."""
        ptr &= MASK32
        nbytes = count * elsize
        size = self._size
        if size is None:
            size = self.size()
        if ptr + nbytes > size:
            raise GuestFault(f"realm.{self._fn}: {what} [{ptr:#x}, {ptr:#x} + {nbytes}) lies outside the "
                             f"guest's memory of {size} bytes")
        if nbytes == 0:
            return 0
        base = self._base
        if base is None:
            base = self._base_address()
        return base + ptr

    def required(self, ptr: int, elsize: int, what: str) -> int:
        """An out-parameter: non-NULL and inside memory."""
        from ..errors import ArgumentError
        if ptr & MASK32 == 0:
            raise ArgumentError(f"{what} is NULL")
        return self.span(ptr, 1, elsize, what)

    # ---- reads (copies) ----------------------------------------------------------------------

    def read(self, ptr: int, nbytes: int, what: str) -> bytes:
        addr = self.span(ptr, nbytes, 1, what)
        return ctypes.string_at(addr, nbytes) if nbytes else b""

    def read_i32(self, ptr: int, count: int, what: str) -> list[int]:
        return np.frombuffer(self.read(ptr, 4 * count, what), dtype="<i4").tolist()

    def read_f32(self, ptr: int, count: int, what: str, into: torch.Tensor | None = None) -> torch.Tensor:
        """A copy of count floats: a new [count] tensor, or `into` (contiguous f32 CPU, count elements)."""
        addr = self.span(ptr, count, 4, what)
        out = torch.empty(count, dtype=_F32) if into is None else into
        if out.numel() != count or out.dtype is not _F32 or not out.is_cpu or not out.is_contiguous():
            raise ValueError("read_f32: `into` is not a contiguous f32 CPU tensor of count elements")
        if count:
            ctypes.memmove(out.data_ptr(), addr, 4 * count)
        return out

    def read_text(self, ptr: int, nbytes: int, what: str) -> str:
        from ..errors import ArgumentError
        raw = self.read(ptr, nbytes, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ArgumentError(f"{what} is not valid UTF-8 (byte {e.start} of {nbytes})") from None

    # ---- writes (the caller checked the span before doing any work) -------------------------

    def write(self, ptr: int, data: bytes, what: str) -> None:
        if data:
            ctypes.memmove(self.span(ptr, len(data), 1, what), data, len(data))

    def write_f32(self, ptr: int, t: torch.Tensor, what: str) -> None:
        if t.dtype is not _F32 or not t.is_cpu or not t.is_contiguous():
            t = t.detach().to("cpu", _F32).contiguous()
        n = t.numel()
        if n:
            ctypes.memmove(self.span(ptr, n, 4, what), t.data_ptr(), 4 * n)

    def write_i32s(self, ptr: int, values, what: str) -> None:
        self.write(ptr, np.asarray(values, dtype="<i4").tobytes(), what)

    def write_u32(self, ptr: int, value: int, what: str) -> None:
        self.write(ptr, int(value).to_bytes(4, "little"), what)

    def write_i64(self, ptr: int, value: int, what: str) -> None:
        self.write(ptr, int(value).to_bytes(8, "little", signed=True), what)
