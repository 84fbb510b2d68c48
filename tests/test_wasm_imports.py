"""Each realm import, called from a proxy guest with chosen arguments: values equal the Python
API's, the two-call protocol holds, and bad values come back as the documented codes."""
import numpy as np
import pytest
import torch

import realm_embed as realm
import realm_embed.errors as E
from realm_embed.wasm import Host
from wasm_util import Proxy, proxy_wat

TEXT, IDS, OUT, MSGS, BIAS, CAND, HID, LOGITS = 0x1000, 0x2000, 0x3000, 0x3100, 0x3800, 0x4000, 0x10000, 0x20000
SIZE, I64, HANDLE = OUT, OUT + 8, OUT + 16
RAW = "The capital of France is"


@pytest.fixture(scope="module")
def host():
    with Host() as h:
        yield h


@pytest.fixture
def guest(host, mid):
    logs = []
    with host.tenant(proxy_wat(), mid, on_log=lambda level, text: logs.append((level, text))) as t:
        p = Proxy(t)
        p.logs = logs
        yield p


def test_model_info_and_end_of_turn_ids(guest, mid):
    info = realm.get_model_info(mid)
    assert guest.model() == 1 and guest.abi_version() == 1
    for key, name in [(1, "n_layer"), (2, "n_embd"), (3, "n_vocab"), (4, "n_ctx_train"), (5, "bos_id"),
                      (6, "eos_id"), (7, "n_head"), (8, "n_head_kv"), (9, "head_dim"), (10, "n_ff")]:
        assert guest.model_info(1, key, I64) == 0
        assert guest.i64(I64) == info[name], name
    assert guest.model_info(1, 99, I64) == E.E_ARG
    assert guest.t.last_error == "realm.model_info: unknown model_info key 99 (known: 1..11)"
    assert guest.model_info(1, 1, 0) == E.E_ARG                          # NULL out-parameter
    assert guest.eot_ids(1, 0, 0, SIZE) == 0 and guest.u32(SIZE) == 2
    assert guest.eot_ids(1, IDS, 2, SIZE) == 0 and guest.i32s(IDS, 2) == [0, 2]


def test_tokenize_two_call_protocol(guest, mid):
    text = "Hello, world! <|im_end|>"
    raw = text.encode()
    guest.write(TEXT, raw)
    want = realm.tokenize(mid, text, add_special=True, parse_special=True)
    assert guest.tokenize(1, TEXT, len(raw), 3, 0, 0, SIZE) == 0 and guest.u32(SIZE) == len(want)
    guest.put_i32s(IDS, [-7] * 16)
    assert guest.tokenize(1, TEXT, len(raw), 3, IDS, 2, SIZE) == E.E_BUFFER_TOO_SMALL
    assert guest.u32(SIZE) == len(want) and guest.i32s(IDS, 16) == [-7] * 16      # untouched
    assert guest.t.last_error == f"realm.tokenize: ids holds 2, {len(want)} needed"
    assert guest.tokenize(1, TEXT, len(raw), 3, IDS, 16, SIZE) == 0
    assert guest.i32s(IDS, guest.u32(SIZE)) == want and guest.t.last_error == ""
    assert guest.tokenize(1, TEXT, len(raw), 0, IDS, 16, SIZE) == 0
    assert guest.i32s(IDS, guest.u32(SIZE)) == realm.tokenize(mid, text, add_special=False, parse_special=False)
    assert guest.tokenize(1, TEXT, len(raw), 4, IDS, 16, SIZE) == E.E_ARG          # unknown flag
    assert guest.tokenize(1, TEXT, len(raw), 3, 0, 16, SIZE) == E.E_ARG            # NULL with a capacity
    guest.write(TEXT, b"\xff\xfe")
    assert guest.tokenize(1, TEXT, 2, 3, IDS, 16, SIZE) == E.E_ARG
    assert guest.t.last_error == "realm.tokenize: text is not valid UTF-8 (byte 0 of 2)"


def test_detokenize_token_piece_and_chat_template(guest, mid):
    ids = realm.tokenize(mid, RAW + " Paris", add_special=False)
    guest.put_i32s(IDS, ids)
    assert guest.detokenize(1, IDS, len(ids), 0, 0, SIZE) == 0
    n = guest.u32(SIZE)
    assert guest.detokenize(1, IDS, len(ids), TEXT, n, SIZE) == 0
    assert guest.read(TEXT, n) == (RAW + " Paris").encode() + b"\0"
    paris = realm.tokenize(mid, " Paris", add_special=False)[0]
    assert guest.token_piece(1, paris, TEXT, 64, SIZE) == 0 and guest.read(TEXT, guest.u32(SIZE)) == b" Paris\0"
    assert guest.token_piece(1, -1, TEXT, 64, SIZE) == E.E_RANGE
    assert guest.token_piece(1, 49152, TEXT, 64, SIZE) == E.E_RANGE

    role, content = b"user", "What is the capital of France?".encode()
    guest.write(0x5000, role + content)
    guest.put_i32s(MSGS, [0x5000, len(role), 0x5000 + len(role), len(content)])
    want = realm.apply_chat_template(mid, [{"role": "user", "content": content.decode()}]).encode() + b"\0"
    assert guest.chat_template(1, MSGS, 1, 1, 0, 0, SIZE) == 0 and guest.u32(SIZE) == len(want)
    assert guest.chat_template(1, MSGS, 1, 1, TEXT, len(want), SIZE) == 0 and guest.read(TEXT, len(want)) == want
    assert guest.chat_template(1, MSGS, 0, 1, TEXT, len(want), SIZE) == E.E_ARG
    assert guest.chat_template(1, MSGS, 1, 2, TEXT, len(want), SIZE) == E.E_ARG


def test_compute_imports_equal_the_python_primitives(guest, mid):
    info = realm.get_model_info(mid)
    L, D, V = info["n_layer"], info["n_embd"], info["n_vocab"]
    ids = realm.tokenize(mid, RAW)
    T = len(ids)
    ref = realm.create_session(mid, 64)
    want = realm.decode(ref, ids)                                                  # [V]

    assert guest.session_create(1, 64, HANDLE) == 0
    s = guest.u32(HANDLE)
    guest.put_i32s(IDS, ids)
    assert guest.embed_tokens(s, IDS, T, HID, T * D - 1) == E.E_BUFFER_TOO_SMALL
    assert guest.embed_tokens(s, IDS, T, HID, T * D) == 0
    assert np.array_equal(guest.f32s(HID, T * D), realm.embed_tokens(ref, ids).reshape(-1).numpy())
    for layer in range(L):
        assert guest.forward_layer(s, layer, 0, HID, T, D, HID, T * D) == 0
    assert guest.session_n_tokens(s, SIZE) == 0 and guest.u32(SIZE) == T
    last = HID + 4 * (T - 1) * D
    assert guest.compute_logits(s, last, 1, D, LOGITS, V) == 0
    got = guest.f32s(LOGITS, V)
    assert np.abs(got - want.numpy()).max() < 1e-4

    # compact logits: the top 5 of the last row, then with the best one banned by a bias
    values, top = realm.top_k_logits(want, 6)
    assert guest.logits_top_k(s, HID, T, D, 0, 0, 5, CAND, CAND + 0x100, SIZE) == 0
    assert guest.u32(SIZE) == 5 and guest.i32s(CAND, 5) == top[:5].tolist()
    guest.write(BIAS, np.array([(int(top[0]), 0)], dtype=[("id", "<i4"), ("v", "<f4")]).tobytes())
    guest.write(BIAS + 4, np.float32(-np.inf).tobytes())
    assert guest.logits_top_k(s, HID, T, D, BIAS, 1, 5, CAND, CAND + 0x100, SIZE) == 0
    assert guest.i32s(CAND, 5) == top[1:6].tolist()
    assert np.allclose(guest.f32s(CAND + 0x100, 5), values[1:6].numpy(), atol=1e-4)
    guest.put_f32s(BIAS + 4, [np.nan])
    assert guest.logits_top_k(s, HID, T, D, BIAS, 1, 5, CAND, CAND + 0x100, SIZE) == E.E_ARG
    guest.put_i32s(BIAS, [V])
    assert guest.logits_top_k(s, HID, T, D, BIAS, 1, 5, CAND, CAND + 0x100, SIZE) == E.E_RANGE
    assert guest.logits_top_k(s, HID, T, D, 0, 0, 0, CAND, CAND + 0x100, SIZE) == E.E_ARG    # k = 0
    assert guest.logits_top_k(s, HID, T, D + 1, 0, 0, 5, CAND, CAND + 0x100, SIZE) == E.E_ARG

    # fused decode on a fork continues the same sequence as the layer loop
    assert guest.session_fork(s, HANDLE) == 0
    f = guest.u32(HANDLE)
    nxt = int(top[0])
    guest.put_i32s(IDS, [nxt])
    assert guest.decode(f, IDS, 1, 0, LOGITS, V) == 0
    fused = guest.f32s(LOGITS, V)
    assert np.abs(fused - realm.decode(ref, [nxt]).numpy()).max() < 1e-4
    assert guest.decode_top_k(s, IDS, 1, 0, 0, 3, CAND, CAND + 0x100, SIZE) == 0
    assert guest.i32s(CAND, 3) == realm.top_k_logits(torch.from_numpy(fused), 3)[1].tolist()
    assert guest.decode(f, IDS, 1, 2, LOGITS, V) == E.E_ARG                          # unknown flag
    assert guest.session_n_tokens(f, SIZE) == 0 and guest.u32(SIZE) == T + 1
    assert guest.session_truncate(f, 2) == 0 and guest.session_n_tokens(f, SIZE) == 0 and guest.u32(SIZE) == 2
    assert guest.session_truncate(f, 50) == E.E_RANGE
    assert guest.session_reset(f) == 0 and guest.session_n_tokens(f, SIZE) == 0 and guest.u32(SIZE) == 0
    assert guest.session_free(f) == 0 and guest.session_free(s) == 0 and guest.session_free(0) == 0
    assert guest.t.sessions() == []
    realm.session_free(ref)


def test_services_emit_log_clock_and_last_error(guest):
    guest.write(TEXT, "héllo ".encode())
    assert guest.emit(TEXT, 3) == 0 and guest.emit(TEXT + 3, 4) == 0            # é split across calls
    assert bytes(guest.t.output).decode() == "héllo "
    guest.write(TEXT, b"from the guest")
    assert guest.log(2, TEXT, 14) == 0 and guest.logs == [(2, "from the guest")]
    assert guest.log(7, TEXT, 14) == E.E_ARG
    assert guest.t.last_error == "realm.log: log level 7 out of range [0, 3]"
    assert guest.last_error(0, 0, SIZE) == 0                     # last_error leaves the message alone
    n = guest.u32(SIZE)
    assert guest.last_error(TEXT, n, SIZE) == 0 and guest.read(TEXT, n) == b"realm.log: log level 7 out of range [0, 3]\0"
    assert guest.abi_version() == 1 and guest.t.last_error == ""
    assert 0 <= guest.now_us() < 10_000_000
