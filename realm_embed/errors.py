"""Result codes and the exceptions that carry them.

Every failure in realm-embed is a RealmError subclass whose ``code`` is the integer the C ABI
returns (include/realm.h is the source of truth; tests check the two tables agree).  Messages
name the argument and the offending value, because that is what reaches a Go or Node user.
"""

OK = 0
E_INTERNAL = -1         # unexpected failure inside the runtime (a bug: please report)
E_INIT = -2             # the runtime could not start (Python, torch or the package missing)
E_ARG = -3              # misuse: a NULL pointer, a bad value, a wrong shape
E_NOT_FOUND = -4        # no such model, session, tensor or token id
E_RANGE = -5            # layer, position, token or length outside its valid range
E_BUFFER_TOO_SMALL = -6 # output buffer too small; the needed size was written back
E_FORMAT = -7           # the model file or bytes are not a valid GGUF
E_UNSUPPORTED = -8      # valid but not supported (architecture, tensor type, device)
E_LIMIT = -9            # a configured limit was hit (size, memory, fuel, context)
E_BUSY = -10            # the object is in use (a model with live sessions)
E_CONFLICT = -11        # the requested id already names different content
E_IO = -12              # the operating system refused (file missing, unreadable)


class RealmError(Exception):
    """Base of every realm-embed error; ``code`` is the C ABI result code."""

    code = E_INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InternalError(RealmError):
    code = E_INTERNAL


class InitError(RealmError):
    code = E_INIT


class ArgumentError(RealmError, ValueError):
    code = E_ARG


class NotFoundError(RealmError, LookupError):
    code = E_NOT_FOUND


class RangeError(RealmError, IndexError):
    code = E_RANGE


class BufferTooSmallError(RealmError):
    code = E_BUFFER_TOO_SMALL

    def __init__(self, message: str, needed: int):
        super().__init__(message)
        self.needed = needed


class FormatError(RealmError, ValueError):
    code = E_FORMAT


class UnsupportedError(RealmError):
    code = E_UNSUPPORTED


class LimitError(RealmError):
    code = E_LIMIT


class BusyError(RealmError):
    code = E_BUSY


class ConflictError(RealmError):
    code = E_CONFLICT


class RealmIOError(RealmError, OSError):
    code = E_IO


def code_of(exc: BaseException) -> int:
    """The C result code for any exception (non-realm exceptions are internal errors)."""
    return exc.code if isinstance(exc, RealmError) else E_INTERNAL
