"""The Python side of librealm.so: the extern "Python" twins of include/realm.h's functions.

capi/realm_capi.c holds the exported C functions; after its checks (start-up, NULL pointers,
struct sizes) each calls its twin _py_<name> with the same arguments minus `realm_error *err`.
The twins here call the Python API (realm_embed) and translate:

* inputs:  caller arrays become zero-copy views (ffi.buffer -> torch.frombuffer) that live for the
  call only; strings are decoded as UTF-8 (invalid UTF-8 is REALM_E_ARG);
* outputs: results are copied into the caller's buffers after their capacity was checked, so a
  failing call writes nothing (sizes excepted, by the two-call protocol);
* errors:  every exception becomes a result code and a message "<function>: <message>" set with
  _realm_set_error (a RealmError keeps its code; anything else is REALM_E_INTERNAL with
  "TypeName: message").  Nothing is ever printed.

install() is called once by the library's init code (capi/build_capi.py INIT_CODE).
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import threading

import torch

import realm_embed as realm
from .errors import (E_INTERNAL, ArgumentError, BufferTooSmallError, InitError, NotFoundError, RangeError,
                     RealmError)
from .sampling import Sampler, SamplerConfig, top_k_logits

ABI_VERSION = 1                       # must equal REALM_ABI_VERSION of the header the library was built from
SEED_RANDOM = (1 << 64) - 1           # REALM_SEED_RANDOM
FINISH = {"stop": 1, "eos": 2, "length": 3, "cancelled": 4}   # REALM_FINISH_*
PRECISION = {0: "exact", 1: "fast"}   # REALM_PRECISION_EXACT, REALM_PRECISION_FAST
DEFAULT_TORCH_THREADS = 1

ffi = None
lib = None


# ---- installation ----------------------------------------------------------------------------

def install(ffi_, lib_) -> None:
    """Bind every twin to the library.  Raises (making start-up fail) on a stale library."""
    global ffi, lib
    built = getattr(lib_, "REALM_ABI_VERSION", None)
    if built != ABI_VERSION:
        raise InitError(f"librealm.so was built for ABI {built}, the Python runtime speaks ABI {ABI_VERSION}: "
                        "rebuild it (pip install -e . or python capi/build_capi.py)")
    ffi, lib = ffi_, lib_
    started = bool(lib._realm_started_python())
    threads = os.environ.get("REALM_TORCH_THREADS")
    if threads is not None or started:      # a Python host keeps its own setting unless asked
        try:
            n = int(threads) if threads is not None else DEFAULT_TORCH_THREADS
            if n < 1:
                raise ValueError
        except ValueError:
            raise InitError(f"REALM_TORCH_THREADS={threads!r} must be a positive integer") from None
        torch.set_num_threads(n)
    if started:                              # our own interpreter: nothing may reach the host's stderr
        import warnings
        warnings.simplefilter("ignore")
        sys.unraisablehook = lambda unraisable: None
        threading.excepthook = lambda args: None
    for name, fn in TWINS.items():
        ffi.def_extern(name=f"_py_{name}", error=E_INTERNAL, onerror=_onerror)(_twin(name, fn))


def _twin(cname: str, fn):
    def twin(*args):
        try:
            return fn(*args) or 0
        except BaseException as exc:         # noqa: BLE001 - every exception becomes a code
            return _fail(cname, exc)
    twin.__name__ = f"_py_{cname}"
    return twin


def _fail(cname: str, exc: BaseException) -> int:
    if isinstance(exc, RealmError):
        code, message = exc.code, exc.message
    else:
        code, message = E_INTERNAL, f"{type(exc).__name__}: {exc}"
    lib._realm_set_error(f"{cname}: {message}".encode("utf-8", "replace"))
    return code


def _onerror(exc_type, exc, tb):
    """What escapes a twin's own try (cffi converting arguments or the result): never printed."""
    try:
        lib._realm_set_error(f"internal error: {exc_type.__name__}: {exc}".encode("utf-8", "replace"))
    except BaseException:                   # noqa: BLE001
        pass


# ---- conversions -----------------------------------------------------------------------------

def _str(ptr, what: str) -> str:
    return _utf8(ffi.string(ptr), what)


def _text(ptr, n: int, what: str) -> str:
    return _utf8(bytes(ffi.buffer(ptr, n)) if n else b"", what)


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArgumentError(f"{what} is not valid UTF-8 (byte {e.start}: {data[e.start]:#04x})") from None


def _ids(ptr, n: int) -> list[int]:
    return list(ffi.unpack(ptr, n)) if n else []


def _f32(ptr, n: int) -> torch.Tensor:
    """A zero-copy [n] view of caller memory; valid during the call only, never kept."""
    return torch.frombuffer(ffi.buffer(ptr, 4 * n), dtype=torch.float32)


def _write_f32(ptr, t: torch.Tensor) -> None:
    t = t.detach().to("cpu", torch.float32).contiguous()
    ffi.memmove(ptr, t.numpy(), 4 * t.numel())


def _put_text(data: bytes, buf, cap: int, size, what: str) -> None:
    """Two-call protocol for text: *size counts the NUL; nothing written unless it all fits."""
    need = len(data) + 1
    size[0] = need
    if buf == ffi.NULL:
        return
    if cap < need:
        raise BufferTooSmallError(f"{what}_cap is {cap} bytes, {need} needed (with the NUL)", need)
    ffi.memmove(buf, data, len(data))
    buf[len(data)] = b"\0"


def _need(cap: int, need: int, what: str, shape: str) -> None:
    if cap < need:
        raise BufferTooSmallError(f"{what}_cap is {cap} floats, {shape} = {need} needed", need)


def _nonempty(n: int, what: str = "n_tokens") -> None:
    if n == 0:
        raise ArgumentError(f"{what} is 0: at least one token is needed")


def _flags(flags: int, allowed: int, names: str) -> None:
    if flags & ~allowed:
        raise ArgumentError(f"flags {flags:#x} has unknown bits {flags & ~allowed:#x} (known: {names})")


def _session(session_id: int):
    return realm.get_session(session_id)


def _dims(s) -> tuple[int, int]:
    cfg = s.model.config
    return cfg.n_embd, cfg.n_vocab     # D, V


# ---- models ----------------------------------------------------------------------------------

def model_store(data, size, requested_id, model_out):
    model_out[0] = realm.store_model(memoryview(ffi.buffer(ffi.cast("char *", data), size)), requested_id)


def model_store_file(path, requested_id, model_out):
    model_out[0] = realm.store_model_file(os.fsdecode(ffi.string(path)), requested_id)


def model_store_default(requested_id, model_out):
    model_out[0] = realm.store_model(None, requested_id)


def model_remove(model):
    realm.remove_model(model)


def model_info_get(model, info):
    d = realm.get_model_info(model)
    for key in ("id", "n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "n_rot", "n_vocab",
                "n_ctx_train", "n_tensors", "rope_freq_base", "rms_eps", "total_bytes"):
        setattr(info, key, d[key])
    info.bos_id = -1 if d.get("bos_id") is None else d["bos_id"]
    info.eos_id = -1 if d.get("eos_id") is None else d["eos_id"]
    info.has_chat_template = int(bool(d.get("has_chat_template")))


INFO_KEYS = {1: "architecture", 2: "name"}     # REALM_MODEL_ARCHITECTURE, REALM_MODEL_NAME; 3 = JSON


def model_info_string(model, key, text, text_cap, size):
    d = realm.get_model_info(model)
    if key == 3:
        value = json.dumps(d, ensure_ascii=False)
    elif key in INFO_KEYS:
        value = str(d.get(INFO_KEYS[key]) or "")
    else:
        raise ArgumentError(f"key {key} is not a REALM_MODEL_* key (1 architecture, 2 name, 3 info JSON)")
    _put_text(value.encode("utf-8"), text, text_cap, size, "text")


def model_tensor_name(model, index, name, name_cap, size):
    names = realm.list_tensors(model)
    if index >= len(names):
        raise RangeError(f"index {index} out of range [0, {len(names)}) (the model's tensors)")
    _put_text(names[index].encode("utf-8"), name, name_cap, size, "name")


def tensor_info_get(model, name, info):
    t = realm.tensor_info(model, _str(name, "name"))
    info.n_dims = len(t.shape)
    for i in range(4):
        info.shape[i] = t.shape[i] if i < len(t.shape) else 0
    info.n_elements = t.n_elements
    info.ggml_type = int(t.ggml_type)
    info.n_bytes = t.nbytes


def tensor_get_f32(model, name, out, out_cap, n_floats):
    tname = _str(name, "name")
    need = realm.tensor_info(model, tname).n_elements
    n_floats[0] = need
    if out == ffi.NULL:
        return
    if out_cap < need:
        raise BufferTooSmallError(f"out_cap is {out_cap} floats, tensor {tname!r} has {need}", need)
    _write_f32(out, realm.get_tensor(model, tname).reshape(-1))


# ---- sessions --------------------------------------------------------------------------------

def session_create(model, n_ctx, session_out):
    session_out[0] = realm.create_session(model, n_ctx).id


def session_create_ex(model, params, session_out):
    precision = PRECISION.get(params.precision)
    if precision is None:
        raise ArgumentError(f"params->precision is {params.precision}, expected REALM_PRECISION_EXACT (0) "
                            "or REALM_PRECISION_FAST (1)")
    device = None if params.device == ffi.NULL else _str(params.device, "params->device")
    session_out[0] = realm.create_session(model, params.n_ctx, device=device, precision=precision).id


def session_fork(session, session_out):
    session_out[0] = realm.session_fork(session).id


def session_reset(session):
    realm.session_reset(session)


def session_truncate(session, n_tokens):
    realm.session_truncate(session, n_tokens)


def session_free(session):
    realm.session_free(session)


def session_n_tokens(session, n_tokens):
    n_tokens[0] = _session(session).n_tokens


def session_n_ctx(session, n_ctx):
    n_ctx[0] = _session(session).n_ctx


def session_model(session, model_out):
    model_out[0] = _session(session).model_id


# ---- compute ---------------------------------------------------------------------------------

def embed_tokens(session, ids, n_tokens, out, out_cap):
    s = _session(session)
    D, _ = _dims(s)
    _nonempty(n_tokens)
    _need(out_cap, n_tokens * D, "out", f"T x D = {n_tokens} x {D}")
    _write_f32(out, realm.embed_tokens(s, _ids(ids, n_tokens)))


def _hidden(s, hidden, n_tokens, n_embd):
    D, _ = _dims(s)
    _nonempty(n_tokens)
    if n_embd != D:
        raise ArgumentError(f"n_embd is {n_embd}, but the model's hidden size D is {D}")
    return _f32(hidden, n_tokens * D).view(n_tokens, D)      # hidden: [T, D], a view


def forward_layer(session, layer, pos, hidden, n_tokens, n_embd, out, out_cap):
    s = _session(session)
    x = _hidden(s, hidden, n_tokens, n_embd)
    _need(out_cap, n_tokens * n_embd, "out", f"T x D = {n_tokens} x {n_embd}")
    y = realm.forward_layer(s, layer, x, pos)                # computed in full before out is written
    del x
    _write_f32(out, y)


def compute_logits(session, hidden, n_tokens, n_embd, logits, logits_cap):
    s = _session(session)
    x = _hidden(s, hidden, n_tokens, n_embd)
    _, V = _dims(s)
    _need(logits_cap, n_tokens * V, "logits", f"T x V = {n_tokens} x {V}")
    y = realm.compute_logits(s, x)
    del x
    _write_f32(logits, y)


def decode(session, ids, n_tokens, flags, logits, logits_cap):
    s = _session(session)
    _flags(flags, 1, "REALM_DECODE_ALL_LOGITS")
    _nonempty(n_tokens)
    _, V = _dims(s)
    every = bool(flags & 1)
    if every:
        _need(logits_cap, n_tokens * V, "logits", f"T x V = {n_tokens} x {V}")
    else:
        _need(logits_cap, V, "logits", "V")
    _write_f32(logits, realm.decode(s, _ids(ids, n_tokens), all_logits=every))


# ---- text ------------------------------------------------------------------------------------

def tokenize(model, text, text_len, flags, ids, ids_cap, n_ids):
    _flags(flags, 3, "REALM_TOKENIZE_ADD_SPECIAL | REALM_TOKENIZE_PARSE_SPECIAL")
    toks = realm.tokenize(model, _text(text, text_len, "text"), add_special=bool(flags & 1),
                          parse_special=bool(flags & 2))
    n_ids[0] = len(toks)
    if ids == ffi.NULL:
        return
    if ids_cap < len(toks):
        raise BufferTooSmallError(f"ids_cap is {ids_cap}, the text has {len(toks)} tokens", len(toks))
    if toks:
        ffi.memmove(ids, ffi.new("int32_t[]", toks), 4 * len(toks))


def detokenize(model, ids, n_ids, text, text_cap, size):
    _put_text(realm.detokenize(model, _ids(ids, n_ids)).encode("utf-8"), text, text_cap, size, "text")


def token_piece(model, token, piece, piece_cap, size):
    _put_text(bytes(realm.token_piece(model, token)), piece, piece_cap, size, "piece")


def _chat(model, messages, flags, text, text_cap, size):
    _flags(flags, 1, "REALM_CHAT_ADD_GENERATION_PROMPT")
    rendered = realm.apply_chat_template(model, messages, add_generation_prompt=bool(flags & 1))
    _put_text(rendered.encode("utf-8"), text, text_cap, size, "text")


def chat_template(model, roles, contents, n_messages, flags, text, text_cap, size):
    messages = [{"role": _str(roles[i], f"roles[{i}]"), "content": _str(contents[i], f"contents[{i}]")}
                for i in range(n_messages)]
    _chat(model, messages, flags, text, text_cap, size)


def chat_template_json(model, messages_json, flags, text, text_cap, size):
    src = _str(messages_json, "messages_json")
    try:
        messages = json.loads(src)
    except json.JSONDecodeError as e:
        raise ArgumentError(f"messages_json is not valid JSON: {e}") from None
    if not isinstance(messages, list):
        raise ArgumentError(f"messages_json must be a JSON array of messages, got a {type(messages).__name__}")
    _chat(model, messages, flags, text, text_cap, size)


# ---- sampling --------------------------------------------------------------------------------

_samplers: dict[int, tuple[Sampler, threading.Lock]] = {}
_samplers_lock = threading.Lock()
_sampler_ids = itertools.count(1)          # never reused


def _sampler_config(p, what: str = "params") -> SamplerConfig:
    config = SamplerConfig(temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
                           repetition_penalty=p.repetition_penalty,
                           seed=None if p.seed == SEED_RANDOM else p.seed)
    try:
        config.validate()
    except ArgumentError as e:
        raise ArgumentError(e.message.replace("SamplerConfig.", f"{what}->")) from None
    return config


def sampler_create(params, sampler_out):
    sampler = Sampler(_sampler_config(params))
    with _samplers_lock:
        sid = next(_sampler_ids)
        _samplers[sid] = (sampler, threading.Lock())
    sampler_out[0] = sid


def _sampler(sampler_id: int):
    with _samplers_lock:
        entry = _samplers.get(sampler_id)
    if entry is None:
        raise NotFoundError(f"sampler {sampler_id} not found")
    return entry


def sampler_sample(sampler, logits, n_logits, history, n_history, token_out):
    smp, lock = _sampler(sampler)
    if n_logits == 0:
        raise ArgumentError("n_logits is 0: logits [V] must hold at least one value")
    x = _f32(logits, n_logits)
    with lock:
        token_out[0] = smp.sample(x, _ids(history, n_history))


def sampler_free(sampler):
    with _samplers_lock:
        if _samplers.pop(sampler, None) is None:
            raise NotFoundError(f"sampler {sampler} not found (unknown or already freed)")


def top_k(logits, n_logits, k, values, ids, n_out):
    if n_logits == 0:
        raise ArgumentError("n_logits is 0: logits [V] must hold at least one value")
    if k == 0:
        raise ArgumentError("k is 0: ask for at least one entry")
    vals, idx = top_k_logits(_f32(logits, n_logits), min(k, n_logits))
    m = vals.numel()
    _write_f32(values, vals)
    ffi.memmove(ids, idx.to(torch.int32).numpy(), 4 * m)
    n_out[0] = m


# ---- generation ------------------------------------------------------------------------------

def _generate(session, prompt, params, result):
    sampler = None if params.sampler == ffi.NULL else _sampler_config(params.sampler, "params->sampler")
    stop = [_str(params.stop[i], f"params->stop[{i}]") for i in range(params.n_stop)]
    on_token = None
    if params.on_token != ffi.NULL:
        callback, user_data = params.on_token, params.user_data

        def on_token(token_id: int, piece: str) -> bool:
            data = piece.encode("utf-8")
            return callback(user_data, token_id, ffi.new("char[]", data), len(data)) == 0

    out = realm.generate(session, prompt, max_tokens=params.max_tokens, sampler=sampler, stop=stop,
                         on_token=on_token)
    result.finish_reason = FINISH[out.finish_reason]
    result.n_prompt = out.n_prompt
    result.n_generated = len(out.token_ids)


def generate(session, prompt, prompt_len, params, result):
    _generate(session, _text(prompt, prompt_len, "prompt"), params, result)


def generate_tokens(session, ids, n_ids, params, result):
    _generate(session, _ids(ids, n_ids), params, result)


# C name (without the _py_ prefix) -> twin.  Every Python-backed function of realm.h is here.
TWINS = {f"realm_{fn.__name__}": fn for fn in (
    model_store, model_store_file, model_store_default, model_remove, model_info_get, model_info_string,
    model_tensor_name, tensor_info_get, tensor_get_f32,
    session_create, session_create_ex, session_fork, session_reset, session_truncate, session_free, session_n_tokens,
    session_n_ctx, session_model,
    embed_tokens, forward_layer, compute_logits, decode,
    tokenize, detokenize, token_piece, chat_template, chat_template_json,
    sampler_create, sampler_sample, sampler_free, top_k,
    generate, generate_tokens,
)}
