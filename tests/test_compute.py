"""Exact-mode compute on the real model: parity with transformers, and the three ways to run a
prompt (fused decode, token by token, layer by layer) agree."""
import pytest
import torch

import realm_embed as realm

RAW_PROMPTS = ["The capital of France is", "def fibonacci(n):\n    if n <", "1, 2, 3, 5, 8, 13,"]
CHAT_PROMPTS = ["What is the capital of France?", "Write a haiku about the sea."]


def _chat_ids(mid, question):
    text = realm.apply_chat_template(mid, [{"role": "user", "content": question}])
    return realm.tokenize(mid, text, add_special=False)


def _logits(mid, ids):
    s = realm.create_session(mid, 256)
    try:
        return realm.decode(s, ids, all_logits=True)
    finally:
        realm.session_free(s)


def test_reference_top5_for_paris_chat_prompt(mid, reference):
    ids = reference["prompt_ids"]
    assert _chat_ids(mid, "What is the capital of France?") == ids
    last = _logits(mid, ids)[-1]
    values, top = last.topk(5)
    assert top.tolist() == [t["id"] for t in reference["top5"]]
    for v, t in zip(values.tolist(), reference["top5"]):
        assert v == pytest.approx(t["logit"], abs=1e-3)


@pytest.mark.parametrize("prompt,chat", [(p, False) for p in RAW_PROMPTS] + [(p, True) for p in CHAT_PROMPTS])
def test_logit_parity_with_transformers(mid, hf_model, prompt, chat):
    ids = _chat_ids(mid, prompt) if chat else realm.tokenize(mid, prompt)
    ours = _logits(mid, ids)                                    # [T, V]
    with torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits[0]        # [T, V]
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-3
    for t in range(len(ids)):
        top_ours, top_theirs = ours[t].topk(5).indices, theirs[t].topk(5).indices
        if not torch.equal(top_ours, top_theirs):
            # a swap is only acceptable between logits that tie within the tolerance
            assert (ours[t][top_ours] - theirs[t][top_theirs]).abs().max() < 1e-3, (t, top_ours, top_theirs)


def test_decode_tokenwise_and_layerwise_agree(mid):
    ids = realm.tokenize(mid, "The quick brown fox jumps over the lazy dog because")
    fused = _logits(mid, ids)

    s = realm.create_session(mid, 64)
    tokenwise = torch.stack([realm.decode(s, [i]) for i in ids])
    assert s.n_tokens == len(ids)
    realm.session_free(s)

    s = realm.create_session(mid, 64)
    L = realm.get_model_info(mid)["n_layer"]
    rows, pos = [], 0
    for chunk in (ids[:5], ids[5:6], ids[6:]):                  # prefill, one token, the rest
        h = realm.embed_tokens(s, chunk)
        for layer in range(L):
            h = realm.forward_layer(s, layer, h, pos)
        rows.append(realm.compute_logits(s, h))
        pos += len(chunk)
    layerwise = torch.cat(rows)
    assert s.n_tokens == len(ids)
    realm.session_free(s)

    assert (tokenwise - fused).abs().max() < 1e-3, (tokenwise - fused).abs().max()
    assert (layerwise - fused).abs().max() < 1e-3, (layerwise - fused).abs().max()
    assert torch.equal(tokenwise.argmax(-1), fused.argmax(-1))


def test_raw_prompt_continues_with_paris(mid):
    s = realm.create_session(mid, 64)
    out = realm.generate(s, "The capital of France is", max_tokens=1)
    assert out.text == " Paris"
    realm.session_free(s)


def test_sessions_do_not_see_each_other(mid):
    a_ids = realm.tokenize(mid, "The capital of France is")
    b_ids = realm.tokenize(mid, "My favourite colour is")
    a_alone, b_alone = _logits(mid, a_ids)[-1], _logits(mid, b_ids)[-1]
    a, b = realm.create_session(mid, 64), realm.create_session(mid, 64)
    for i in range(max(len(a_ids), len(b_ids))):                # interleaved, token by token
        if i < len(a_ids):
            la = realm.decode(a, [a_ids[i]])
        if i < len(b_ids):
            lb = realm.decode(b, [b_ids[i]])
    assert torch.allclose(la, a_alone, atol=1e-3) and torch.allclose(lb, b_alone, atol=1e-3)
    realm.session_free(a), realm.session_free(b)


def test_fork_truncate_reset(mid):
    ids = realm.tokenize(mid, "One, two, three, four")
    s = realm.create_session(mid, 64)
    realm.decode(s, ids)
    child = realm.session_fork(s)
    assert child.n_tokens == s.n_tokens == len(ids)
    nxt = realm.tokenize(mid, ", five")
    assert torch.allclose(realm.decode(child, nxt), realm.decode(s, nxt), atol=1e-5)

    realm.session_truncate(s, 3)                                # back to the first 3 tokens
    assert s.n_tokens == 3
    replay = realm.decode(s, ids[3:])
    fresh = _logits(mid, ids)[-1]
    assert torch.allclose(replay, fresh, atol=1e-3)

    realm.session_reset(s)
    assert s.n_tokens == 0 and child.n_tokens == len(ids) + len(nxt)
    realm.session_free(s), realm.session_free(child)


@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_failed_calls_leave_the_session_exactly_as_before(mid, kv_state, precision):
    s = realm.create_session(mid, 16, precision=precision)
    ids = realm.tokenize(mid, "The capital of France is")
    realm.decode(s, ids)
    before = kv_state(s)
    D, V, L = (realm.get_model_info(mid)[k] for k in ("n_embd", "n_vocab", "n_layer"))
    h = realm.embed_tokens(s, [42])
    bad_calls = [
        (realm.RangeError, lambda: realm.forward_layer(s, L, h, len(ids))),
        (realm.RangeError, lambda: realm.forward_layer(s, -1, h, len(ids))),
        (realm.RangeError, lambda: realm.forward_layer(s, 0, h, len(ids) + 1)),     # a gap
        (realm.RangeError, lambda: realm.forward_layer(s, 0, realm.embed_tokens(s, [1] * 12), len(ids))),
        (realm.ArgumentError, lambda: realm.forward_layer(s, 0, torch.zeros(1, D + 1), len(ids))),
        (realm.ArgumentError, lambda: realm.forward_layer(s, 0, torch.full((1, D), float("nan")), len(ids))),
        (realm.RangeError, lambda: realm.decode(s, [V])),
        (realm.RangeError, lambda: realm.decode(s, [-1])),
        (realm.RangeError, lambda: realm.decode(s, [1] * 12)),                      # past n_ctx
        (realm.ArgumentError, lambda: realm.decode(s, [])),
        (realm.ArgumentError, lambda: realm.decode(s, ["x"])),
        (realm.ArgumentError, lambda: realm.compute_logits(s, torch.zeros(2, 3))),
        (realm.RangeError, lambda: realm.session_truncate(s, len(ids) + 1)),
    ]
    for exc, call in bad_calls:
        with pytest.raises(exc) as info:
            call()
        assert str(info.value)                                   # every error says what was wrong
        after = kv_state(s)
        assert after[0] == before[0] and torch.equal(after[1], before[1]) and torch.equal(after[2], before[2])
    realm.session_free(s)
    with pytest.raises(realm.NotFoundError, match="freed"):
        realm.decode(s, [1])
    with pytest.raises(realm.NotFoundError):
        realm.decode(s.id, [1])


def test_layer_error_messages_name_the_value(mid):
    s = realm.create_session(mid, 8)
    with pytest.raises(realm.RangeError, match=r"layer 99 out of range \[0, 30\)"):
        realm.forward_layer(s, 99, realm.embed_tokens(s, [1]), 0)
    with pytest.raises(realm.RangeError, match=r"token id 49152 out of range \[0, 49152\)"):
        realm.embed_tokens(s, [1, 49152])
    realm.session_free(s)
