"""Bounds-checked access to one guest's linear memory, for the duration of one import call.

Every guest pointer and length is an unsigned 32-bit value; the byte span is computed with
Python integers (no wrap at any width) and checked against the memory's size read afresh for
every import call, because memory.grow may move and resize the memory between calls.  (Within
one import call it cannot change: the guest is suspended in the call, and the host never grows
guest memory, so the size and base are read once per call.)  A span
outside the memory raises GuestFault, which traps the guest.  Data is always copied in and out:
no view of guest memory outlives the access, and buffers need no alignment.
"""
from __future__ import annotations

import ctypes

import numpy as np
import torch

from .errors import GuestFault

MASK32 = 0xFFFFFFFF


class GuestMemory:
    __slots__ = ("_mem", "_store", "_fn", "_size", "_base")

    def __init__(self, mem, store, fn: str):
        self._mem, self._store, self._fn = mem, store, fn
        self._size = self._base = None

    def size(self) -> int:
        if self._size is None:
            self._size = self._mem.data_len(self._store)
        return self._size

    def span(self, ptr: int, count: int, elsize: int, what: str) -> int:
        """Check [ptr, ptr + count * elsize) lies in memory; return the host address of ptr."""
        ptr &= MASK32
        nbytes = count * elsize
        size = self.size()
        if ptr + nbytes > size:
            raise GuestFault(f"realm.{self._fn}: {what} [{ptr:#x}, {ptr:#x} + {nbytes}) lies outside the "
                             f"guest's memory of {size} bytes")
        if nbytes == 0:
            return 0
        if self._base is None:
            self._base = ctypes.addressof(self._mem.data_ptr(self._store).contents)
        return self._base + ptr

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

    def read_f32(self, ptr: int, count: int, what: str) -> torch.Tensor:   # -> [count] f32
        return torch.frombuffer(bytearray(self.read(ptr, 4 * count, what)), dtype=torch.float32)

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
        t = t.detach().to("cpu", torch.float32).contiguous()
        n = t.numel()
        if n:
            ctypes.memmove(self.span(ptr, n, 4, what), t.data_ptr(), 4 * n)

    def write_i32s(self, ptr: int, values, what: str) -> None:
        self.write(ptr, np.asarray(values, dtype="<i4").tobytes(), what)

    def write_u32(self, ptr: int, value: int, what: str) -> None:
        self.write(ptr, int(value).to_bytes(4, "little"), what)

    def write_i64(self, ptr: int, value: int, what: str) -> None:
        self.write(ptr, int(value).to_bytes(8, "little", signed=True), what)
