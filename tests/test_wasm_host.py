"""Guests on the real model: the reference guest's greedy tokens equal the Python path's token for
token (layer by layer and fused, top-k and full logits; exact and fast precision), its own sampler
and stop rule work, the ban_word guest really owns decoding, 8 tenants share one stored model, and
the host, not the guest, picks the precision of every session a guest makes."""
import threading

import pytest

import realm_embed as realm
from realm_embed.errors import ArgumentError
from realm_embed.storage import REGISTRY
from realm_embed.wasm import Host, Limits, Tenant
from realm_embed.wasm.runner import rss_bytes
from wasm_util import Proxy, proxy_wat

QUESTION = "What is the capital of France?"
RAW = "The capital of France is"


@pytest.fixture(scope="module")
def host():
    with Host() as h:
        yield h


def python_generate(mid, prompt, *, chat=False, precision="exact", **kwargs):
    s = realm.create_session(mid, 128, precision=precision)
    try:
        if chat:
            prompt = realm.apply_chat_template(mid, [{"role": "user", "content": prompt}])
        return realm.generate(s, prompt, **kwargs)
    finally:
        realm.session_free(s)


@pytest.fixture(scope="module")
def python_paris(mid):
    return python_generate(mid, QUESTION, chat=True, max_tokens=16)


@pytest.fixture(scope="module")
def python_raw(mid):
    return python_generate(mid, RAW, max_tokens=4)


@pytest.mark.parametrize("fused", [False, True], ids=["layer-by-layer", "fused"])
def test_paris_through_the_guest_equals_the_python_path(host, mid, python_paris, fused):
    streamed = []
    with host.tenant("generate", mid, on_emit=streamed.append) as t:
        r = t.generate(QUESTION, max_tokens=16, fused=fused)
        assert t.sessions() == []                               # the guest freed its session
        calls = dict(t.import_calls)
    assert r.text == python_paris.text == "The capital of France is Paris."
    assert r.token_ids == python_paris.token_ids
    assert (r.finish_reason, r.n_prompt) == ("eos", python_paris.n_prompt)
    assert b"".join(streamed).decode() == r.text
    assert r.memory_bytes <= 512 * 1024
    steps = 1 + len(r.token_ids)                                 # prefill, then one per token fed back
    if fused:
        assert calls["decode_top_k"] == steps and "forward_layer" not in calls
    else:
        L = realm.get_model_info(mid)["n_layer"]
        assert calls["forward_layer"] == L * steps and calls["logits_top_k"] == steps
        assert "decode" not in calls and "decode_top_k" not in calls


@pytest.mark.parametrize("fused", [False, True], ids=["layer-by-layer", "fused"])
def test_full_logits_greedy_and_stop_string_equal_the_python_path(host, mid, python_raw, fused):
    with host.tenant("generate", mid) as t:
        r = t.generate(RAW, chat=False, max_tokens=4, fused=fused, full_logits=True)
        expected = python_raw
        assert (r.token_ids, r.text, r.finish_reason) == (expected.token_ids, expected.text, "length")
        assert r.memory_bytes > 4 * realm.get_model_info(mid)["n_vocab"]     # V floats live in the guest
        r = t.generate(RAW, chat=False, extra=".", max_tokens=8, fused=fused)
    expected = python_generate(mid, RAW, max_tokens=8, stop=["."])
    assert (r.text, r.finish_reason) == (expected.text, expected.finish_reason) == (" Paris", "stop")
    assert r.token_ids == expected.token_ids


@pytest.mark.parametrize("full_logits", [False, True], ids=["host-top-k", "full-logits"])
def test_guest_sampler_is_seeded_and_near_zero_temperature_is_greedy(host, mid, python_raw, full_logits):
    kw = dict(chat=False, max_tokens=3, fused=True, full_logits=full_logits)
    top = dict(top_k=40, top_p=0.95) if full_logits else {}     # full logits: the guest's own top-k/top-p
    with host.tenant("generate", mid) as t:
        cold = t.generate(RAW, temperature=1e-3, seed=3, **kw)
        kw["max_tokens"] = 2
        runs = [t.generate(RAW, temperature=3.0, seed=s, **top, **kw).token_ids for s in (11, 11, 12)]
    assert cold.token_ids == python_raw.token_ids[:3]
    assert runs[0] == runs[1] and len(runs[0]) == 2
    V = realm.get_model_info(mid)["n_vocab"]
    assert all(0 <= i < V for r in runs for i in r)
    assert len({tuple(r) for r in runs}) > 1                    # a hot sampler varies with the seed


def test_ban_word_guest_owns_decoding(host, mid, python_raw):
    paris = realm.tokenize(mid, " Paris", add_special=False)
    assert python_raw.token_ids[:1] == paris
    with host.tenant("ban_word", mid) as t:
        r = t.generate(RAW, chat=False, max_tokens=3)
        assert paris[0] not in r.token_ids and "Paris" not in r.text and len(r.token_ids) == 3
        r = t.generate("The capital of Germany is", chat=False, extra="Berlin", max_tokens=3)
        assert "Berlin" not in r.text
        r = t.generate("The capital of Germany is", chat=False, extra="Paris", max_tokens=1)
        assert r.text == " Berlin"                               # banning Paris leaves Berlin alone


CAPITALS = {"France": " Paris", "Germany": " Berlin", "Italy": " Rome", "Japan": " Tokyo"}


def test_eight_tenants_share_one_stored_model(host, mid, monkeypatch):
    prompts = [f"The capital of {c} is" for c in CAPITALS] * 2
    expected = {p: python_generate(mid, p, max_tokens=1) for p in set(prompts)}   # also warms the weights
    models = []
    adopt = Tenant.adopt_session
    monkeypatch.setattr(Tenant, "adopt_session", lambda self, s: models.append(s.model) or adopt(self, s))
    ids_before = REGISTRY.ids()
    rss0 = rss_bytes()
    tenants = [host.tenant("generate", mid, name=f"t{i}", limits=Limits(memory_mib=4)) for i in range(8)]
    results = [None] * 8

    def work(i):
        results[i] = tenants[i].generate(prompts[i], chat=False, max_tokens=1, fused=i % 2 == 0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rss1 = rss_bytes()
    for p, r in zip(prompts, results):
        assert r is not None and r.token_ids == expected[p].token_ids
        assert r.text == CAPITALS[p.split()[3]]
    assert REGISTRY.ids() == ids_before                          # no model stored by a tenant
    assert len(models) == 8 and all(m is REGISTRY.get(mid) for m in models)
    per_tenant = (rss1 - rss0) / 8
    model_bytes = realm.get_model_info(mid)["total_bytes"]
    assert per_tenant < model_bytes / 4, f"{per_tenant / 2**20:.1f} MiB per tenant"
    for t in tenants:
        t.close()


def test_cli_guest_runs_tenants_and_reports_memory(mid, capsys):
    from realm_embed.cli import main
    assert main(["guest", "--raw", "--fused", "--prompt", RAW, "--max-tokens", "2", "--tenants", "2"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["[tenant-0]  Paris.", "[tenant-1]  Paris."]
    assert "guest memory 256 KiB" in err and "2 tenants on model" in err and "(stored once)" in err
    assert main(["guest", "ban_word", "--raw", "--prompt", RAW, "--max-tokens", "1"]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() and "Paris" not in out
    assert main(["guest", "/nonexistent.wasm"]) == 2
    assert "cannot read guest /nonexistent.wasm" in capsys.readouterr().err


@pytest.mark.parametrize("fused", [False, True], ids=["layer-by-layer", "fused"])
def test_fast_tenant_equals_the_fast_python_path(host, mid, fused):
    expected = python_generate(mid, RAW, max_tokens=4, precision="fast")
    with host.tenant("generate", mid, precision="fast") as t:
        assert t.precision == "fast" and host.precision == "exact"
        r = t.generate(RAW, chat=False, max_tokens=4, fused=fused)
    assert (r.token_ids, r.text) == (expected.token_ids, expected.text)
    assert r.text.startswith(" Paris")


def test_the_host_picks_every_guest_sessions_precision(host, mid):
    OUT = 0x100

    def precisions(t):
        p = Proxy(t)
        assert p.session_create(1, 32, OUT) == 0
        assert p.session_fork(p.u32(OUT), OUT + 4) == 0                   # the fork keeps it
        return [s.precision for s in t.sessions()]

    with host.tenant(proxy_wat(), mid, precision="fast") as t:
        assert precisions(t) == ["fast", "fast"]
    with host.tenant(proxy_wat(), mid) as t:                               # the host's default
        assert precisions(t) == ["exact", "exact"]
    with Host(precision="fast") as fast_host, fast_host.tenant(proxy_wat(), mid) as t:
        assert t.precision == "fast" and precisions(t) == ["fast", "fast"]
        with fast_host.tenant(proxy_wat(), mid, precision="exact") as t2:  # a tenant overrides it
            assert precisions(t2) == ["exact", "exact"]


@pytest.mark.parametrize("bad", ["slow", "FAST", "", 1, b"fast"])
def test_bad_precision_is_rejected_naming_the_value(host, mid, bad):
    with pytest.raises(ArgumentError, match=rf"^precision={bad!r} must be one of 'exact', 'fast'"):
        host.tenant("generate", mid, precision=bad)
    with pytest.raises(ArgumentError, match=rf"^precision={bad!r}"):
        Host(precision=bad)


def test_cli_guest_precision(mid, capsys):
    from realm_embed.cli import main
    assert main(["guest", "--raw", "--fused", "--prompt", RAW, "--max-tokens", "2", "--precision", "fast"]) == 0
    assert capsys.readouterr().out == " Paris.\n"
    assert main(["guest", "--precision", "slow"]) == 2
    assert "realm: error: --precision='slow' must be one of 'exact', 'fast'" in capsys.readouterr().err
