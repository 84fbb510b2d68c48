"""Hostile guests: bad pointers, wrapping and huge lengths, handles they don't own, runaway loops,
memory bombs and crashes.  Each is stopped or refused with a clear error for that guest alone;
the host, the guest's own host state and the other tenants keep working and answer as before."""
import threading
import time

import numpy as np
import pytest
import torch

import realm_embed as realm
import realm_embed.errors as E
from realm_embed.wasm import GuestFault, GuestLimitError, GuestTrap, Host, Limits
from wasm_util import GUESTS, Proxy, proxy_wat

TEXT, IDS, OUT, HID, LOGITS = 0x1000, 0x2000, 0x3000, 0x10000, 0x20000
SIZE, HANDLE = OUT, OUT + 16
MEM = 8 * 65536                      # the proxy's memory
RAW = "The capital of France is"


@pytest.fixture(scope="module", params=["lean", "wasmtime-py"])
def host(request):
    """Every hostile case runs through both import trampolines: the host's lean one (on
    wasmtime-py's internals) and wasmtime-py's own, its fallback where those internals change."""
    from realm_embed.wasm import host as host_module
    native = host_module._NATIVE
    if request.param == "lean" and not native:
        pytest.skip("this wasmtime-py lacks the internals the lean trampoline uses")
    host_module._NATIVE = request.param == "lean"
    try:
        with Host() as h:
            yield h
    finally:
        host_module._NATIVE = native


@pytest.fixture(scope="module")
def reference(host, mid):
    """A well-behaved tenant and its answer before any hostile guest ran."""
    t = host.tenant("generate", mid, name="reference")
    before = t.generate(RAW, chat=False, max_tokens=2, fused=True)
    assert before.text == " Paris."
    yield t, before
    t.close()


@pytest.fixture
def proxy(host, mid):
    with host.tenant(proxy_wat(), mid, name="hostile") as t:
        yield Proxy(t)


def dims(mid):
    info = realm.get_model_info(mid)
    return info["n_layer"], info["n_embd"], info["n_vocab"]


def still_works(p, mid):
    p.write(TEXT, b"Paris")
    assert p.tokenize(1, TEXT, 5, 0, IDS, 8, SIZE) == 0
    assert p.i32s(IDS, p.u32(SIZE)) == realm.tokenize(mid, "Paris", add_special=False)


def test_out_of_bounds_pointers_trap_for_that_guest_alone(proxy, mid):
    with pytest.raises(GuestFault) as e:
        proxy.tokenize(1, MEM - 4, 10, 0, IDS, 8, SIZE)
    assert str(e.value) == (f"realm.tokenize: text [{MEM - 4:#x}, {MEM - 4:#x} + 10) lies outside the guest's "
                            f"memory of {MEM} bytes")
    assert (e.value.code, e.value.reason) == (E.E_ARG, "fault")
    proxy.write(TEXT, b"Paris")
    proxy.put_i32s(SIZE, [12345])
    with pytest.raises(GuestFault, match=r"realm.tokenize: ids \[0x7fffc, 0x7fffc \+ 32\) lies outside"):
        proxy.tokenize(1, TEXT, 5, 0, MEM - 4, 8, SIZE)
    assert proxy.u32(SIZE) == 12345                               # nothing written
    with pytest.raises(GuestFault, match="realm.model_info: value"):
        proxy.model_info(1, 1, MEM - 4)
    proxy.put_i32s(0x5000, [MEM + 100, 4, TEXT, 5])               # a chat message whose role is outside
    with pytest.raises(GuestFault, match=r"messages\[0\].role"):
        proxy.chat_template(1, 0x5000, 1, 1, TEXT, 100, SIZE)
    still_works(proxy, mid)


def test_wrapping_pointers_and_lengths_trap(proxy, mid):
    L, D, V = dims(mid)
    with pytest.raises(GuestFault, match=r"text \[0xfffffff0, 0xfffffff0 \+ 32\)"):
        proxy.tokenize(1, 0xFFFFFFF0, 0x20, 0, IDS, 8, SIZE)      # ptr + len wraps to 0x10
    with pytest.raises(GuestFault, match=r"realm.emit: text \[0x1000, 0x1000 \+ 4294967295\)"):
        proxy.emit(TEXT, 0xFFFFFFFF)
    assert proxy.session_create(1, 16, HANDLE) == 0
    s = proxy.u32(HANDLE)
    with pytest.raises(GuestFault, match=r"realm.embed_tokens: ids \[0x2000, 0x2000 \+ 4294967300\)"):
        proxy.embed_tokens(s, IDS, 0x40000001, HID, 64)           # 4 * n wraps to 4 in 32 bits
    T = (1 << 32) // (4 * D) + 1                                  # T * D * 4 wraps to a small number
    assert (T * D * 4) % (1 << 32) < MEM
    with pytest.raises(GuestFault, match="realm.forward_layer: hidden"):
        proxy.forward_layer(s, 0, 0, HID, T, D, HID, T * D)
    with pytest.raises(GuestFault, match="realm.decode: logits"):
        proxy.decode(s, IDS, 1, 0, LOGITS, 0xFFFFFFFF)
    assert proxy.session_n_tokens(s, SIZE) == 0 and proxy.u32(SIZE) == 0
    still_works(proxy, mid)


def test_huge_counts_are_refused_or_clamped(proxy, mid):
    L, D, V = dims(mid)
    assert proxy.chat_template(1, TEXT, 0xFFFFFFFF, 1, TEXT, 100, SIZE) == E.E_ARG
    assert proxy.t.last_error == "realm.chat_template: n_messages 4294967295 out of range [1, 1024]"
    assert proxy.session_create(1, 0xFFFFFFFF, HANDLE) == E.E_RANGE
    assert proxy.session_create(1, 64, HANDLE) == 0
    s = proxy.u32(HANDLE)
    proxy.put_i32s(IDS, realm.tokenize(mid, RAW))
    assert proxy.decode_top_k(s, IDS, 5, TEXT, 0xFFFFFFFF, 5, 0x5000, 0x6000, SIZE) == E.E_ARG
    assert proxy.t.last_error == f"realm.decode_top_k: n_bias 4294967295 exceeds the vocabulary size {V}"
    assert proxy.session_n_tokens(s, SIZE) == 0 and proxy.u32(SIZE) == 0      # refused before decoding
    # k = 2**32 - 1 is clamped to V: ids[V] and values[V] must fit, and they do here
    assert proxy.decode_top_k(s, IDS, 5, 0, 0, 0xFFFFFFFF, 0x10000, 0x10000 + 4 * V, SIZE) == 0
    assert proxy.u32(SIZE) == V
    ids = proxy.i32s(0x10000, V)
    assert sorted(ids) == list(range(V)) and ids[0] == realm.tokenize(mid, " Paris", add_special=False)[0]


def test_tenant_limits_on_sessions_and_kv_positions(host, mid):
    with host.tenant(proxy_wat(), mid, limits=Limits(max_sessions=2, max_kv_tokens=100)) as t:
        p = Proxy(t)
        assert p.session_create(1, 60, HANDLE) == 0
        assert p.session_create(1, 60, HANDLE) == E.E_LIMIT
        assert t.last_error == "realm.session_create: n_ctx 60 would bring this guest's KV positions to 120, " \
                               "over its limit of 100"
        assert p.session_create(1, 40, HANDLE) == 0
        assert p.session_create(1, 1, HANDLE) == E.E_LIMIT
        assert p.session_fork(p.u32(HANDLE), HANDLE + 4) == E.E_LIMIT
        assert len(t.sessions()) == 2


def test_foreign_and_freed_handles_are_not_found(host, mid):
    with host.tenant(proxy_wat(), mid, name="a") as ta, host.tenant(proxy_wat(), mid, name="b") as tb:
        a, b = Proxy(ta), Proxy(tb)
        assert b.session_create(1, 16, HANDLE) == 0 and b.u32(HANDLE) == 2
        b.put_i32s(IDS, realm.tokenize(mid, RAW)[:2])
        assert b.decode_top_k(2, IDS, 2, 0, 0, 1, 0x5000, 0x5004, SIZE) == 0
        global_id = tb.sessions()[0].id

        def not_found(call, handle, kind="session"):
            assert call() == E.E_NOT_FOUND
            name = ta.last_error.split(":")[0]
            assert ta.last_error == f"{name}: {kind} handle {handle} not found"

        for h in (2, 999, global_id, -1):                      # b's handle, never made, a global id, junk
            not_found(lambda: a.session_n_tokens(h, SIZE), h)
            not_found(lambda: a.session_free(h), h)
            not_found(lambda: a.decode(h, IDS, 1, 0, LOGITS, 1 << 16), h)
        not_found(lambda: a.session_n_tokens(1, SIZE), 1)       # the model handle is not a session
        assert a.session_create(1, 16, HANDLE) == 0 and a.u32(HANDLE) == 2      # a's own handle 2
        not_found(lambda: a.tokenize(2, TEXT, 1, 0, IDS, 8, SIZE), 2, "model")   # ... is not a model
        assert a.session_free(2) == 0
        not_found(lambda: a.session_n_tokens(2, SIZE), 2)       # freed: the same as never existed
        not_found(lambda: a.session_free(2), 2)
        assert a.session_create(1, 16, HANDLE) == 0 and a.u32(HANDLE) == 3      # handles are not reused
        assert b.session_n_tokens(2, SIZE) == 0 and b.u32(SIZE) == 2            # b's session untouched


def test_failing_imports_leave_the_session_unchanged(proxy, mid):
    L, D, V = dims(mid)
    ids = realm.tokenize(mid, RAW)
    assert proxy.session_create(1, 32, HANDLE) == 0
    h = proxy.u32(HANDLE)
    proxy.put_i32s(IDS, ids[:3])
    assert proxy.decode(h, IDS, 3, 0, LOGITS, V) == 0
    s = proxy.t.sessions()[0]
    snap = (s.kv.k[:, :, :3].clone(), s.kv.v[:, :, :3].clone(), list(s.kv.filled))

    def unchanged():
        assert s.n_tokens == 3 and s.kv.filled == snap[2]
        assert torch.equal(s.kv.k[:, :, :3], snap[0]) and torch.equal(s.kv.v[:, :, :3], snap[1])

    proxy.put_i32s(IDS, [V + 5])
    assert proxy.decode(h, IDS, 1, 0, LOGITS, V) == E.E_RANGE
    proxy.put_i32s(IDS, [ids[3]])
    assert proxy.decode(h, IDS, 1, 0, LOGITS, V - 1) == E.E_BUFFER_TOO_SMALL
    with pytest.raises(GuestFault):
        proxy.decode(h, IDS, 1, 0, MEM - 100, V)
    proxy.put_i32s(0x5000, [7, 0])
    proxy.put_f32s(0x5004, [np.inf])
    assert proxy.decode_top_k(h, IDS, 1, 0x5000, 1, 1, 0x5100, 0x5104, SIZE) == E.E_ARG
    unchanged()
    proxy.put_f32s(HID, np.ones(D))
    proxy.put_f32s(HID + 4 * 7, [np.nan])
    assert proxy.forward_layer(h, 0, 3, HID, 1, D, HID, D) == E.E_ARG                  # NaN in hidden
    proxy.put_f32s(HID + 4 * 7, [1.0])
    assert proxy.forward_layer(h, 0, 10, HID, 1, D, HID, D) == E.E_RANGE               # skips positions
    assert proxy.forward_layer(h, L, 3, HID, 1, D, HID, D) == E.E_RANGE                # no such layer
    with pytest.raises(GuestFault):
        proxy.forward_layer(h, 0, 3, HID, 1, D, MEM - 8, D)                             # output outside
    unchanged()
    assert proxy.decode(h, IDS, 1, 0, LOGITS, V) == 0                                   # and it goes on
    ref = realm.create_session(mid, 32)
    want = realm.decode(ref, ids[:4])
    realm.session_free(ref)
    assert np.abs(proxy.f32s(LOGITS, V) - want.numpy()).max() < 1e-4


def test_infinite_loop_is_stopped_by_fuel(host, mid):
    with host.tenant(GUESTS / "spin.wat", mid, limits=Limits(fuel=10_000_000)) as t:
        for _ in range(2):                                        # and the tenant stays usable
            t0 = time.perf_counter()
            with pytest.raises(GuestLimitError) as e:
                t.call("spin")
            assert time.perf_counter() - t0 < 5
            assert (e.value.reason, e.value.code) == ("fuel", E.E_LIMIT)
            assert str(e.value).endswith("ran out of fuel (10000000 wasm instructions per call)")
    looping_start = '(module (memory (export "memory") 1) (func $s (loop $l (br $l))) (start $s))'
    with pytest.raises(GuestLimitError, match="ran out of fuel"):
        host.tenant(looping_start, mid, limits=Limits(fuel=10_000_000))      # stopped while instantiating


@pytest.mark.parametrize("guest", ["spin.wat", "import_loop.wat"])
def test_runaway_guest_is_stopped_by_the_deadline(host, mid, guest):
    with host.tenant(GUESTS / guest, mid, limits=Limits(fuel=0, deadline_s=0.3)) as t:
        t0 = time.perf_counter()
        with pytest.raises(GuestLimitError) as e:
            t.call("spin")
        assert 0.29 < time.perf_counter() - t0 < 5
        assert e.value.reason == "deadline" and "passed its deadline of 0.3 s per call" in str(e.value)
        if guest == "import_loop.wat":
            assert t.import_calls["now_us"] > 10


def test_memory_bomb_is_capped(host, mid):
    with host.tenant(GUESTS / "bomb.wat", mid, limits=Limits(memory_mib=4)) as t:
        assert t.call("grow_all") == -1
        pages = t.call("bomb")                                   # 1 + 16 + 16 + 16: one more is over
        assert pages == 49 and t.memory_bytes == pages << 16 <= 4 << 20
    with pytest.raises(GuestLimitError, match=r"needs 1000 pages \(62.5 MiB\) of memory at start, more than its "
                                              r"limit of 16 MiB"):
        host.tenant(GUESTS / "big_memory.wat", mid, limits=Limits(memory_mib=16))
    with pytest.raises(GuestLimitError, match="memory"):
        host.tenant('(module (memory (export "memory") 1000))', mid, limits=Limits(memory_mib=16))
    with host.tenant("generate", mid, limits=Limits(memory_mib=0.1875)) as t:   # 3 pages: no room for hidden
        with pytest.raises(E.LimitError, match="guest .* returned -9"):
            t.generate(RAW, chat=False, max_tokens=1)
        assert t.sessions() == []


def test_guest_crashes_are_contained(host, mid):
    with host.tenant(GUESTS / "crash.wat", mid) as t:
        for export, words in [("recurse", "stack"), ("unreachable", "unreachable"), ("oob_load", "out of bounds")]:
            with pytest.raises(GuestTrap, match=words) as e:
                t.call(export)
            assert e.value.code == E.E_ARG and str(e.value).startswith(f"guest {t.name} trapped")


def test_host_callback_errors_reach_the_caller_unchanged(host, mid):
    class Cancel(Exception):
        pass

    def on_emit(data):
        if data == b"stop":
            raise Cancel("the host said stop")
        if data == b"again":
            t.call("abi_version")                # re-entering the same tenant is refused

    with host.tenant(proxy_wat(), mid, on_emit=on_emit) as t:
        p = Proxy(t)
        p.write(TEXT, b"stopagain")
        with pytest.raises(Cancel, match="the host said stop"):
            p.emit(TEXT, 4)
        with pytest.raises(E.BusyError, match="already running a call"):
            p.emit(TEXT + 4, 5)
        still_works(p, mid)


def test_per_call_budgets(host, mid):
    with host.tenant(proxy_wat(), mid, limits=Limits(max_output_bytes=10, max_log_bytes=5)) as t:
        p = Proxy(t)
        p.write(TEXT, b"12345678")
        assert p.emit(TEXT, 8) == 0
        assert p.emit(TEXT, 8) == 0                           # each call into the guest has its budget
        assert p.log(1, TEXT, 8) == E.E_LIMIT
        assert t.last_error == "realm.log: the log budget of 5 bytes per call is spent"
    with host.tenant("generate", mid, limits=Limits(host_time_s=1e-6)) as t:
        with pytest.raises(E.LimitError, match="the host-time budget of 1e-06 s for this call is spent"):
            t.generate(RAW, chat=False, max_tokens=1)


def test_spinning_tenant_does_not_stop_the_others(host, mid, reference):
    ref, before = reference
    errors = []
    with host.tenant(GUESTS / "spin.wat", mid, limits=Limits(fuel=0, deadline_s=3)) as spinner:
        th = threading.Thread(target=lambda: errors.append(pytest.raises(GuestLimitError, spinner.call, "spin")))
        th.start()
        r = ref.generate(RAW, chat=False, max_tokens=2, fused=True)
        th.join()
    assert r.token_ids == before.token_ids and r.text == before.text
    assert errors and errors[0].value.reason == "deadline"


def test_closed_tenant_frees_its_sessions(host, mid):
    t = host.tenant(proxy_wat(), mid)
    p = Proxy(t)
    assert p.session_create(1, 8, HANDLE) == 0 and p.session_create(1, 8, HANDLE) == 0
    ids = [s.id for s in t.sessions()]
    t.close()
    for i in ids:
        with pytest.raises(E.NotFoundError):
            realm.get_session(i)
    with pytest.raises(E.NotFoundError, match="is closed"):
        t.call("abi_version")


def test_other_tenants_answer_as_before(reference):
    ref, before = reference
    after = ref.generate(RAW, chat=False, max_tokens=2, fused=True)
    assert (after.token_ids, after.text) == (before.token_ids, before.text)
    assert ref.sessions() == []
