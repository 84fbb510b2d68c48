"""The "realm" imports, one function each, documented in bindings/wasm/realm_guest.h.

Each takes the calling Tenant, a GuestMemory for this call, and the guest's arguments (already
converted: pointers and sizes unsigned, handles and token ids signed).  The order inside each is
always: resolve handles -> check every guest span (inputs and outputs) -> check values -> do the
work -> write the outputs.  So a fault or an error happens before anything changes, and the
runtime's own guarantee (a failed call leaves the session as it was) covers the rest.
Returning None means REALM_OK; raising a RealmError returns its code to the guest (host.py).
"""
from __future__ import annotations

import time

import torch

from .. import api, session as rs
from ..errors import ArgumentError, BufferTooSmallError, LimitError, RangeError
from ..sampling import top_k_logits
from .abi import ABI_VERSION, Signature

IMPORTS: dict[str, tuple[Signature, callable]] = {}

MODEL, SESSION = "model", "session"
MAX_MESSAGES = 1024
MAX_TEXT_BYTES = 16 << 20        # tokenize / chat_template input
MAX_DETOKENIZE_IDS = 1 << 20
LOG_LINE_BYTES = 1024


def realm_import(name: str, params: str, result: str = "i"):
    def register(fn):
        IMPORTS[name] = (Signature(params, result), fn)
        return fn
    return register


def _two_call(m, buf: int, cap: int, size_ptr: int, payload: bytes, count: int, elsize: int, what: str) -> None:
    """The two-call protocol: size query, fill, or BUFFER_TOO_SMALL with the needed count."""
    m.required(size_ptr, 4, "size")
    if buf == 0 and cap == 0:
        m.write_u32(size_ptr, count, "size")
        return
    if buf == 0:
        raise ArgumentError(f"{what} is NULL with a capacity of {cap}")
    m.span(buf, cap, elsize, what)
    if cap < count:
        m.write_u32(size_ptr, count, "size")
        raise BufferTooSmallError(f"{what} holds {cap}, {count} needed", needed=count)
    m.write(buf, payload, what)
    m.write_u32(size_ptr, count, "size")


def _text(s: str) -> bytes:
    return s.encode("utf-8") + b"\0"


def _flags(flags: int, allowed: int, what: str) -> None:
    if flags & ~allowed:
        raise ArgumentError(f"unknown {what} flags {flags:#x} (known: {allowed:#x})")


# ---- host services ----------------------------------------------------------------------------

@realm_import("abi_version", "")
def abi_version(t, m):
    return ABI_VERSION


@realm_import("last_error", "pup")
def last_error(t, m, text, cap, size):
    _two_call(m, text, cap, size, _text(t.last_error), len(_text(t.last_error)), 1, "text")


@realm_import("emit", "pu")
def emit(t, m, text, n):
    data = m.read(text, n, "text")
    t.emit(data)


@realm_import("log", "ipu")
def log(t, m, level, text, n):
    if not 0 <= level <= 3:
        raise ArgumentError(f"log level {level} out of range [0, 3]")
    m.span(text, n, 1, "text")                       # the whole line must be guest memory
    data = m.read(text, min(n, LOG_LINE_BYTES), "text")  # ... of which 1 KiB is kept
    t.log(level, data.decode("utf-8", "replace"))


@realm_import("now_us", "", "I")
def now_us(t, m):
    return int((time.perf_counter() - t.step_started) * 1e6)


# ---- the model --------------------------------------------------------------------------------

_INFO = {1: "n_layer", 2: "n_embd", 3: "n_vocab", 4: "n_ctx_train", 5: "bos_id", 6: "eos_id",
         7: "n_head", 8: "n_head_kv", 9: "head_dim", 10: "n_ff", 11: "has_chat_template"}


@realm_import("model", "")
def model(t, m):
    return t.model_handle


@realm_import("model_info", "hip")
def model_info(t, m, handle, key, value):
    mid = t.handles.get(MODEL, handle)
    m.required(value, 8, "value")
    if key not in _INFO:
        raise ArgumentError(f"unknown model_info key {key} (known: 1..{len(_INFO)})")
    v = t.host.model_info(mid)[_INFO[key]]
    m.write_i64(value, -1 if v is None else int(v), "value")


@realm_import("eot_ids", "hpup")
def eot_ids(t, m, handle, ids, cap, n):
    mid = t.handles.get(MODEL, handle)
    eot = sorted(t.host.model(mid).tokenizer.eot_ids)
    _two_call(m, ids, cap, n, b"".join(i.to_bytes(4, "little", signed=True) for i in eot), len(eot), 4, "ids")


# ---- text -------------------------------------------------------------------------------------

@realm_import("tokenize", "hpuupup")
def tokenize(t, m, handle, text, n, flags, ids, cap, n_ids):
    mid = t.handles.get(MODEL, handle)
    if n > MAX_TEXT_BYTES:
        raise LimitError(f"text of {n} bytes is over the limit of {MAX_TEXT_BYTES}")
    s = m.read_text(text, n, "text")
    _flags(flags, 3, "tokenize")
    out = api.tokenize(mid, s, add_special=bool(flags & 1), parse_special=bool(flags & 2))
    _two_call(m, ids, cap, n_ids, b"".join(i.to_bytes(4, "little") for i in out), len(out), 4, "ids")


@realm_import("detokenize", "hpupup")
def detokenize(t, m, handle, ids, n_ids, text, cap, size):
    mid = t.handles.get(MODEL, handle)
    if n_ids > MAX_DETOKENIZE_IDS:
        raise LimitError(f"n_ids {n_ids} is over the limit of {MAX_DETOKENIZE_IDS}")
    payload = _text(api.detokenize(mid, m.read_i32(ids, n_ids, "ids")))
    _two_call(m, text, cap, size, payload, len(payload), 1, "text")


@realm_import("token_piece", "hipup")
def token_piece(t, m, handle, token, piece, cap, size):
    mid = t.handles.get(MODEL, handle)
    payload = api.token_piece(mid, token) + b"\0"
    _two_call(m, piece, cap, size, payload, len(payload), 1, "piece")


@realm_import("chat_template", "hpuupup")
def chat_template(t, m, handle, messages, n, flags, text, cap, size):
    mid = t.handles.get(MODEL, handle)
    if not 1 <= n <= MAX_MESSAGES:
        raise ArgumentError(f"n_messages {n} out of range [1, {MAX_MESSAGES}]")
    raw = m.read_i32(messages, 4 * n, "messages")
    _flags(flags, 1, "chat_template")
    msgs, total = [], 0
    for i in range(n):
        role, role_len, content, content_len = (x & 0xFFFFFFFF for x in raw[4 * i:4 * i + 4])
        total += role_len + content_len
        if total > MAX_TEXT_BYTES:
            raise LimitError(f"messages of more than {MAX_TEXT_BYTES} bytes")
        msgs.append({"role": m.read_text(role, role_len, f"messages[{i}].role"),
                     "content": m.read_text(content, content_len, f"messages[{i}].content")})
    try:
        rendered = api.apply_chat_template(mid, msgs, add_generation_prompt=bool(flags & 1))
    except (RangeError, ArgumentError):
        raise
    except Exception as e:                       # jinja2 raising inside the template
        raise ArgumentError(f"the chat template raised {type(e).__name__}: {e}") from None
    payload = _text(rendered)
    _two_call(m, text, cap, size, payload, len(payload), 1, "text")


# ---- sessions ---------------------------------------------------------------------------------

@realm_import("session_create", "hup")
def session_create(t, m, handle, n_ctx, out):
    mid = t.handles.get(MODEL, handle)
    m.required(out, 4, "session")
    n_train = t.host.model_info(mid)["n_ctx_train"]
    if n_ctx > n_train:
        raise RangeError(f"n_ctx {n_ctx} exceeds the model's context length {n_train}")
    t.check_session_room(n_ctx or min(rs.DEFAULT_N_CTX, n_train))
    s = api.create_session(mid, n_ctx, precision=t.precision)      # the host's choice, never the guest's
    m.write_u32(out, t.adopt_session(s), "session")


@realm_import("session_fork", "hp")
def session_fork(t, m, handle, out):
    s = t.handles.get(SESSION, handle)
    m.required(out, 4, "forked")
    t.check_session_room(s.n_ctx)
    child = api.session_fork(s)                  # same precision as its parent
    m.write_u32(out, t.adopt_session(child), "forked")


@realm_import("session_free", "h")
def session_free(t, m, handle):
    if handle != 0:
        t.free_session(handle)


@realm_import("session_reset", "h")
def session_reset(t, m, handle):
    rs.session_reset(t.handles.get(SESSION, handle))


@realm_import("session_truncate", "hu")
def session_truncate(t, m, handle, n):
    rs.session_truncate(t.handles.get(SESSION, handle), n)


@realm_import("session_n_tokens", "hp")
def session_n_tokens(t, m, handle, out):
    s = t.handles.get(SESSION, handle)
    m.required(out, 4, "n_tokens")
    m.write_u32(out, s.n_tokens, "n_tokens")


# ---- compute ----------------------------------------------------------------------------------

def _dims(s):
    c = s.model.config
    return c.n_embd, c.n_vocab


def _hidden(t, m, s, hidden, T, n_embd, rows=None) -> torch.Tensor:   # -> [T, D] (or the last row)
    D, _ = _dims(s)
    if n_embd != D:
        raise ArgumentError(f"n_embd {n_embd} is not the model's D = {D}")
    if T == 0:
        raise ArgumentError("n_tokens is 0: at least one token is needed")
    if rows == "last":
        m.span(hidden, T * D, 4, "hidden")
        return m.read_f32(hidden + 4 * (T - 1) * D, D, "hidden", t.scratch(1, D))
    return m.read_f32(hidden, T * D, "hidden", t.scratch(T, D))       # the read checks the span first


def _out(m, ptr, cap, need, what):
    m.span(ptr, cap, 4, what)
    if ptr & 0xFFFFFFFF == 0 and need:
        raise ArgumentError(f"{what} is NULL")
    if cap < need:
        raise BufferTooSmallError(f"{what} holds {cap} floats, {need} needed", needed=need)


def _ids(m, ids, T):
    if T == 0:
        raise ArgumentError("n_tokens is 0: at least one token is needed")
    return m.read_i32(ids, T, "ids")


def _bias(m, s, bias, n_bias):   # -> (ids [n] int64, values [n] f32) or None
    _, V = _dims(s)
    if n_bias == 0:
        return None
    if n_bias > V:
        raise ArgumentError(f"n_bias {n_bias} exceeds the vocabulary size {V}")
    raw = m.read(bias, 8 * n_bias, "bias")
    ids = torch.frombuffer(bytearray(raw), dtype=torch.int32).view(n_bias, 2)[:, 0].to(torch.int64)
    values = torch.frombuffer(bytearray(raw), dtype=torch.float32).view(n_bias, 2)[:, 1].clone()
    bad = (ids < 0) | (ids >= V)
    if bad.any():
        raise RangeError(f"bias id {int(ids[bad][0])} out of range [0, {V})")
    if torch.isnan(values).any() or torch.isposinf(values).any():
        raise ArgumentError("a bias value is NaN or +inf (use -inf to ban a token)")
    return ids, values


def _top_k(m, s, logits, bias, k, ids, values, n_out):   # logits: [V]
    _, V = _dims(s)
    if bias is not None:
        logits = logits.clone().index_add_(0, bias[0], bias[1])
    vals, top = top_k_logits(logits, min(k, V))
    m.write_i32s(ids, top.tolist(), "ids")
    m.write_f32(values, vals, "values")
    m.write_u32(n_out, len(top), "n_out")


def _check_top_k(m, s, k, ids, values, n_out):
    _, V = _dims(s)
    if k == 0:
        raise ArgumentError("k is 0: at least one candidate is needed")
    n = min(k, V)
    m.span(ids, n, 4, "ids")
    m.span(values, n, 4, "values")
    m.required(n_out, 4, "n_out")
    if ids & 0xFFFFFFFF == 0 or values & 0xFFFFFFFF == 0:
        raise ArgumentError("ids or values is NULL")


@realm_import("embed_tokens", "hpupu")
def embed_tokens(t, m, handle, ids, T, out, cap):
    s = t.handles.get(SESSION, handle)
    D, _ = _dims(s)
    tokens = _ids(m, ids, T)
    _out(m, out, cap, T * D, "out")
    m.write_f32(out, t.timed(rs.embed_tokens, s, tokens), "out")


@realm_import("forward_layer", "huupuupu")
def forward_layer(t, m, handle, layer, pos, hidden, T, n_embd, out, cap):
    s = t.handles.get(SESSION, handle)
    x = _hidden(t, m, s, hidden, T, n_embd)
    _out(m, out, cap, T * n_embd, "out")
    m.write_f32(out, t.timed(rs.forward_layer, s, layer, x, pos), "out")


@realm_import("compute_logits", "hpuupu")
def compute_logits(t, m, handle, hidden, T, n_embd, logits, cap):
    s = t.handles.get(SESSION, handle)
    _, V = _dims(s)
    x = _hidden(t, m, s, hidden, T, n_embd)
    _out(m, logits, cap, T * V, "logits")
    m.write_f32(logits, t.timed(rs.compute_logits, s, x), "logits")


@realm_import("logits_top_k", "hpuupuuppp")
def logits_top_k(t, m, handle, hidden, T, n_embd, bias, n_bias, k, ids, values, n_out):
    s = t.handles.get(SESSION, handle)
    x = _hidden(t, m, s, hidden, T, n_embd, rows="last")
    b = _bias(m, s, bias, n_bias)
    _check_top_k(m, s, k, ids, values, n_out)
    with t.compute():
        _top_k(m, s, rs.compute_logits(s, x)[0], b, k, ids, values, n_out)


@realm_import("decode", "hpuupu")
def decode(t, m, handle, ids, T, flags, logits, cap):
    s = t.handles.get(SESSION, handle)
    _, V = _dims(s)
    tokens = _ids(m, ids, T)
    _flags(flags, 1, "decode")
    _out(m, logits, cap, T * V if flags & 1 else V, "logits")
    m.write_f32(logits, t.timed(rs.decode, s, tokens, all_logits=bool(flags & 1)), "logits")


@realm_import("decode_top_k", "hpupuuppp")
def decode_top_k(t, m, handle, ids, T, bias, n_bias, k, top_ids, top_values, n_out):
    s = t.handles.get(SESSION, handle)
    tokens = _ids(m, ids, T)
    b = _bias(m, s, bias, n_bias)
    _check_top_k(m, s, k, top_ids, top_values, n_out)
    with t.compute():
        _top_k(m, s, rs.decode(s, tokens), b, k, top_ids, top_values, n_out)

