"""Errors of the wasm host.  Every one is a RealmError with the C ABI's code, so a host
application handles a stopped guest like any other realm-embed failure.

A guest that is *stopped* (a trap: memory fault, fuel, deadline, its own crash) raises one of
the GuestStop classes from the call into the guest; a guest that is *refused* at load time
raises GuestAbiError.  An import that fails for any other reason does not raise on the host
side at all: it returns a REALM_E_* code to the guest, whose message is Tenant.last_error.
"""
from __future__ import annotations

from .. import errors as E


class GuestAbiError(E.UnsupportedError):
    """The module cannot run on this host: an unknown import, a wrong signature, no memory."""


class GuestStop(E.RealmError):
    """The call into the guest was stopped; the tenant's host state (handles, sessions) is intact."""

    reason = "trap"


class GuestFault(GuestStop, E.ArgumentError):
    """An import was given a pointer or length outside the guest's memory (a trap)."""

    reason = "fault"


class GuestTrap(GuestStop):
    """The guest trapped on its own (unreachable, stack overflow, out-of-bounds load, ...)."""

    code = E.E_ARG
    reason = "trap"


class GuestLimitError(GuestStop, E.LimitError):
    """A per-tenant limit stopped the guest: fuel, the wall-clock deadline, or its memory."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


_BY_CODE = {cls.code: cls for cls in (E.InternalError, E.InitError, E.ArgumentError, E.NotFoundError,
                                      E.RangeError, E.FormatError, E.UnsupportedError, E.LimitError,
                                      E.BusyError, E.ConflictError, E.RealmIOError)}


def error_for(code: int, message: str) -> E.RealmError:
    """The RealmError for a result code a guest returned."""
    if code == E.E_BUFFER_TOO_SMALL:
        return E.BufferTooSmallError(message, needed=0)
    return _BY_CODE.get(code, E.InternalError)(message)
