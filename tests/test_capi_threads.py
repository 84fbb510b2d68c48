"""16 threads calling mixed C ABI functions on 2 models give what one thread gives.

ctypes releases the GIL around each call, so the threads enter librealm.so concurrently: the
library takes the GIL per call (cffi keeps one thread state per OS thread) and torch releases it
inside kernels.  Each thread owns its session and sampler; the models are shared.
"""
from __future__ import annotations

import ctypes as C
import hashlib
import json
import threading
from ctypes import byref, c_int32, c_size_t, c_uint32, c_uint64
from pathlib import Path

import pytest

from realm_embed import _capi_ctypes as capi

N_THREADS = 16
N_JOBS = 4          # distinct (model, prompt) jobs: thread i runs job i % N_JOBS


@pytest.fixture(scope="module")
def lib():
    lib = capi.load()
    assert lib.realm_init(None) == 0, lib.realm_last_error()
    return lib


@pytest.fixture(scope="module")
def models(lib, model_path):
    first, second = c_uint64(), c_uint64()
    assert lib.realm_model_store_default(0, byref(first), None) == 0
    data = bytearray(Path(model_path).read_bytes())
    at = data.find(b"Smollm2 135M 8k")
    data[at:at + 2] = b"T2"                            # other content: a second model
    assert lib.realm_model_store(bytes(data), len(data), 0, byref(second), None) == 0
    assert first.value != second.value
    yield first.value, second.value
    assert lib.realm_model_remove(second, None) == 0, lib.realm_last_error()
    assert lib.realm_model_remove(first, None) == 0


def check(rc, lib):
    if rc != 0:
        raise AssertionError(lib.realm_last_error().decode())


def work(lib, model: int, t: int, who: int = 0) -> dict:
    """One thread's mixed calls (job t); returns everything it observed."""
    out = {}
    text = f"Fact {t}: the capital of France is".encode()
    n = c_size_t()
    check(lib.realm_tokenize(model, text, len(text), 3, None, 0, byref(n), None), lib)
    ids = (c_int32 * n.value)()
    check(lib.realm_tokenize(model, text, len(text), 3, ids, n.value, byref(n), None), lib)
    out["ids"] = list(ids)
    info = capi.ModelInfo()
    check(lib.realm_model_info_get(model, byref(info), None), lib)
    V, D = info.n_vocab, info.n_embd
    session = c_uint64()
    check(lib.realm_session_create(model, 64, byref(session), None), lib)
    logits = (C.c_float * V)()
    check(lib.realm_decode(session, ids, len(ids), 0, logits, V, None), lib)
    out["logits"] = hashlib.sha256(bytes(logits)).hexdigest()
    vals, top, m = (C.c_float * 5)(), (c_int32 * 5)(), c_size_t()
    check(lib.realm_top_k(logits, V, 5, vals, top, byref(m), None), lib)
    out["top"] = list(top)
    piece = C.create_string_buffer(64)
    check(lib.realm_token_piece(model, top[0], piece, 64, byref(n), None), lib)
    out["piece"] = piece.value
    hidden = (C.c_float * (2 * D))()
    check(lib.realm_embed_tokens(session, ids, 2, hidden, 2 * D, None), lib)
    out["embed"] = hashlib.sha256(bytes(hidden)).hexdigest()
    params = capi.sampler_params(temperature=0.9, top_k=20, seed=t)
    sampler = c_uint64()
    check(lib.realm_sampler_create(byref(params), byref(sampler), None), lib)
    drawn = c_int32()
    check(lib.realm_sampler_sample(sampler, logits, V, ids, len(ids), byref(drawn), None), lib)
    out["drawn"] = drawn.value
    check(lib.realm_sampler_free(sampler, None), lib)
    msgs = json.dumps([{"role": "user", "content": f"question {t}"}]).encode()
    check(lib.realm_chat_template_json(model, msgs, 1, None, 0, byref(n), None), lib)
    out["chat_size"] = n.value
    full = out["ids"] + [top[0]]
    check(lib.realm_detokenize(model, (c_int32 * len(full))(*full), len(full), None, 0, byref(n), None), lib)
    buf = C.create_string_buffer(n.value)
    check(lib.realm_detokenize(model, (c_int32 * len(full))(*full), len(full), buf, n.value, byref(n), None), lib)
    out["text"] = buf.value.decode()
    tokens = c_uint32()
    check(lib.realm_session_n_tokens(session, byref(tokens), None), lib)
    out["n_tokens"] = tokens.value
    # misuse in the middle of it all keeps its own message on its own thread
    assert lib.realm_session_truncate(10**9 + who, 0, None) == capi.DEFINES["REALM_E_NOT_FOUND"]
    error = lib.realm_last_error().decode()
    assert str(10**9 + who) in error, error           # this thread's message, not another's
    check(lib.realm_session_free(session, None), lib)
    return out


def test_16_threads_equal_one_thread(lib, models):
    jobs = [(models[t % 2], t % N_JOBS) for t in range(N_THREADS)]
    reference = [work(lib, models[j % 2], j) for j in range(N_JOBS)]     # one thread, one after the other
    expected = [reference[t % N_JOBS] for t in range(N_THREADS)]
    results, errors = [None] * N_THREADS, []
    start = threading.Barrier(N_THREADS)

    def run(i):
        try:
            start.wait()
            results[i] = work(lib, *jobs[i], who=i)
        except BaseException as e:                       # noqa: BLE001
            errors.append(f"thread {i}: {e!r}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    assert not errors, errors
    assert results == expected
    assert all(" Paris" in r["text"] for r in results), [r["text"] for r in results]
