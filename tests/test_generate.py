"""Generation on the real model: the Paris answer, streaming, stop rules, limits, seeds."""
import subprocess
import sys

import pytest

import realm_embed as realm


@pytest.fixture
def session(mid):
    s = realm.create_session(mid, 256)
    yield s
    realm.session_free(s)


def _chat(mid, question="What is the capital of France?"):
    return realm.apply_chat_template(mid, [{"role": "user", "content": question}])


def test_chat_answer_matches_reference(mid, session, reference):
    out = realm.generate(session, _chat(mid), max_tokens=32)
    assert out.token_ids == reference["greedy_new_ids"][:-1]     # the reference ends with EOS
    assert out.text == reference["greedy_text"] == "The capital of France is Paris."
    assert out.finish_reason == "eos" and out.n_prompt == len(reference["prompt_ids"])


def test_stream_and_callback_yield_the_same_text(mid, session):
    pieces = []
    out = realm.generate(session, _chat(mid), max_tokens=12, on_token=lambda i, t: pieces.append(t))
    assert "".join(pieces) == out.text
    realm.session_reset(session)
    events = list(realm.stream(session, _chat(mid), max_tokens=12))
    assert "".join(e.text for e in events) == out.text
    assert [e.id for e in events if e.id >= 0] == out.token_ids


def test_callback_can_cancel(mid, session):
    out = realm.generate(session, _chat(mid), max_tokens=30, on_token=lambda i, t: False)
    assert out.finish_reason == "cancelled" and len(out.token_ids) == 1


def test_stop_string_cuts_the_text(mid, session):
    out = realm.generate(session, _chat(mid), max_tokens=30, stop=["France"])
    assert out.finish_reason == "stop" and out.text == "The capital of "


def test_max_tokens_and_context_overflow(mid):
    s = realm.create_session(mid, 40)
    prompt = _chat(mid)                                            # 37 tokens
    out = realm.generate(s, prompt, max_tokens=100)
    assert out.finish_reason == "length" and len(out.token_ids) == 4   # the context filled up
    realm.session_reset(s)
    assert realm.generate(s, prompt, max_tokens=2).finish_reason == "length"
    realm.session_free(s)
    tiny = realm.create_session(mid, 8)
    with pytest.raises(realm.LimitError, match="does not fit"):
        realm.generate(tiny, prompt)
    assert tiny.n_tokens == 0
    realm.session_free(tiny)


def test_seeded_sampling_is_reproducible(mid, session):
    cfg = realm.SamplerConfig(temperature=1.0, top_k=40, top_p=0.95, seed=1234)
    a = realm.generate(session, "Once upon a time", max_tokens=16, sampler=cfg)
    realm.session_reset(session)
    b = realm.generate(session, "Once upon a time", max_tokens=16, sampler=cfg)
    realm.session_reset(session)
    c = realm.generate(session, "Once upon a time", max_tokens=16,
                       sampler=realm.SamplerConfig(temperature=1.0, top_k=40, top_p=0.95, seed=99))
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


@pytest.mark.parametrize("kwargs,match", [
    ({"max_tokens": -1}, "max_tokens"), ({"stop": [""]}, "stop"), ({"stop": [3]}, "stop"),
    ({"sampler": realm.SamplerConfig(temperature=-1.0)}, "temperature"),
])
def test_bad_arguments(session, kwargs, match):
    with pytest.raises(realm.ArgumentError, match=match):
        realm.generate(session, "hi", **kwargs)
    assert session.n_tokens == 0


def test_unicode_streams_whole_characters(mid, session):
    out = realm.generate(session, _chat(mid, "Say 'café ☕' and nothing else."), max_tokens=12,
                         on_token=lambda i, t: ("\ufffd" not in t) or pytest.fail(f"partial char in {t!r}"))
    assert "\ufffd" not in out.text


def test_cli_run_answers_paris():
    r = subprocess.run([sys.executable, "-m", "realm_embed", "run", "--max-tokens", "16"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_cli_info_and_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "realm_embed", "info"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "n_layer" in r.stdout and "272 tensors" in r.stdout
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(100))
    r = subprocess.run([sys.executable, "-m", "realm_embed", "info", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "realm: error:" in r.stderr and "Traceback" not in r.stderr
