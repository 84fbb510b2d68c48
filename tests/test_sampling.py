"""Sampling: greedy, seeds, top-k/top-p/min-p, repetition penalty, bias, and the errors."""

import math

import pytest
import torch

from realm_embed.errors import ArgumentError, RangeError
from realm_embed.sampling import (Sampler, SamplerConfig, apply_bias, apply_repetition_penalty, logits_to_probs,
                                  top_k_logits)


def _random_logits(n=20, vocab=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(vocab, generator=g) * 3 for _ in range(n)]


def _draws(sampler, logits, n):
    return [sampler.sample(logits) for _ in range(n)]


def test_greedy_is_argmax():
    s = Sampler(SamplerConfig())
    for x in _random_logits():
        assert s.sample(x) == int(torch.argmax(x))
    assert s.sample(torch.tensor([1.0, 5.0, 5.0, 2.0])) == 1  # ties go to the lower id
    assert s.sample(torch.tensor([1.0, 2.0], dtype=torch.float16)) == 1
    assert s.sample(torch.tensor([-math.inf, -3.0, -math.inf])) == 1


def test_same_seed_same_tokens_and_reset():
    x = torch.zeros(50)  # uniform: every draw is pure generator output
    cfg = SamplerConfig(temperature=1.0, seed=1234)
    a, b = Sampler(cfg), Sampler(cfg)
    first = _draws(a, x, 40)
    assert first == _draws(b, x, 40)
    assert first != _draws(Sampler(SamplerConfig(temperature=1.0, seed=1235)), x, 40)
    a.reset()
    assert _draws(a, x, 40) == first
    unseeded = Sampler(SamplerConfig(temperature=1.0))
    once = _draws(unseeded, x, 40)
    unseeded.reset()
    assert _draws(unseeded, x, 40) == once  # a random seed is still fixed for the sampler's life
    assert once != _draws(Sampler(SamplerConfig(temperature=1.0)), x, 40)


def test_top_k_1_and_tiny_top_p_are_greedy():
    k1 = Sampler(SamplerConfig(temperature=1.5, top_k=1, seed=0))
    p0 = Sampler(SamplerConfig(temperature=1.5, top_p=1e-6, seed=0))
    for x in _random_logits():
        assert k1.sample(x) == p0.sample(x) == int(torch.argmax(x))


def test_top_k_and_top_p_keep_the_right_set():
    x = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    probs = logits_to_probs(x, SamplerConfig(temperature=1.0, top_k=2))
    assert torch.allclose(probs, torch.tensor([4 / 7, 3 / 7, 0, 0]))
    # top_p=0.65: 0.4 alone is short of it, 0.4+0.3 reaches it, so two tokens stay
    probs = logits_to_probs(x, SamplerConfig(temperature=1.0, top_p=0.65))
    assert torch.allclose(probs, torch.tensor([4 / 7, 3 / 7, 0, 0]))
    probs = logits_to_probs(x, SamplerConfig(temperature=1.0, top_p=0.7 + 1e-4))
    assert (probs > 0).tolist() == [True, True, True, False]


def test_min_p_filters():
    x = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    cfg = SamplerConfig(temperature=1.0, min_p=0.2, seed=3)  # keeps p >= 0.2 * 0.5 = 0.1
    probs = logits_to_probs(x, cfg)
    assert probs[3] == 0 and torch.allclose(probs[:3], torch.tensor([0.5, 0.3, 0.15]) / 0.95)
    assert 3 not in set(_draws(Sampler(cfg), x, 3000))
    assert set(_draws(Sampler(SamplerConfig(temperature=1.0, min_p=0.0, seed=3)), x, 3000)) == {0, 1, 2, 3}


def test_repetition_penalty_semantics():
    x = torch.tensor([2.0, -2.0, 1.0, 0.5])
    out = apply_repetition_penalty(x, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]  # positive divided, negative multiplied, once each
    assert x.tolist() == [2.0, -2.0, 1.0, 0.5]    # the input is not modified
    s = Sampler(SamplerConfig(repetition_penalty=2.0))
    assert s.sample(torch.tensor([3.0, 2.0]), history=[0]) == 1
    assert s.sample(torch.tensor([3.0, 2.0]), history=[]) == 0
    with pytest.raises(RangeError, match="history token id 7"):
        s.sample(torch.tensor([3.0, 2.0]), history=[0, 7])


def test_history_is_checked_with_the_penalty_off():
    s = Sampler(SamplerConfig(temperature=0.0))
    assert s.sample(torch.tensor([3.0, 2.0]), history=[1, 1]) == 0
    with pytest.raises(RangeError, match="history token id -1"):
        s.sample(torch.tensor([3.0, 2.0]), history=[0, -1])


def test_temperature_sampling_follows_softmax():
    x = torch.tensor([1.0, 0.5, 0.0, -1.0])
    for temperature in (1.0, 0.7):
        n = 20000
        draws = _draws(Sampler(SamplerConfig(temperature=temperature, seed=42)), x, n)
        counts = torch.bincount(torch.tensor(draws), minlength=4).double()
        expected = torch.softmax(x.double() / temperature, 0) * n
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 25.0, (temperature, counts.tolist(), expected.tolist())  # 3 dof: p < 1e-4


def test_top_k_logits_order_and_ties():
    x = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])
    values, ids = top_k_logits(x, 2)
    assert values.tolist() == [3.0, 3.0] and ids.tolist() == [1, 2]
    assert top_k_logits(x, 4)[1].tolist() == [1, 2, 4, 3]
    assert top_k_logits(x, 100)[1].tolist() == [1, 2, 4, 3, 0]  # k > V gives all V
    big = torch.randn(49152)
    values, ids = top_k_logits(big, 5)
    assert ids.tolist() == torch.topk(big, 5).indices.tolist() and torch.equal(values, big[ids])
    with pytest.raises(ArgumentError, match="k=0"):
        top_k_logits(x, 0)


def test_apply_bias():
    x = torch.tensor([5.0, 1.0, 0.0])
    assert apply_bias(x, {0: -math.inf, 2: 2.0}).tolist() == [-math.inf, 1.0, 2.0]
    assert x.tolist() == [5.0, 1.0, 0.0]
    assert apply_bias(x, torch.tensor([0.0, 10.0, 0.0])).tolist() == [5.0, 11.0, 0.0]
    assert Sampler(SamplerConfig()).sample(x, bias={0: -math.inf}) == 1
    with pytest.raises(RangeError, match="bias token id 3"):
        apply_bias(x, {3: 1.0})
    with pytest.raises(ArgumentError, match=r"bias shape \(2,\)"):
        apply_bias(x, torch.zeros(2))
    with pytest.raises(ArgumentError, match="every token banned"):
        Sampler(SamplerConfig()).sample(x, bias={0: -math.inf, 1: -math.inf, 2: -math.inf})


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", math.nan), ("temperature", math.inf), ("temperature", "hot"),
    ("top_k", -1), ("top_k", 2.5), ("top_p", 0.0), ("top_p", 1.5), ("top_p", math.nan),
    ("min_p", -0.1), ("min_p", 1.1), ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
    ("seed", -1), ("seed", 2**64), ("seed", "x"),
])
def test_config_validation_names_field(field, value):
    cfg = SamplerConfig(**{field: value})
    with pytest.raises(ArgumentError, match=rf"SamplerConfig\.{field}={value!r}".replace("(", r"\(")):
        cfg.validate()
    with pytest.raises(ArgumentError, match=field):
        Sampler(cfg)


def test_bad_logits():
    s = Sampler(SamplerConfig(temperature=1.0, seed=0))
    with pytest.raises(ArgumentError, match="NaN"):
        s.sample(torch.tensor([0.0, math.nan]))
    with pytest.raises(ArgumentError, match=r"\+inf"):
        s.sample(torch.tensor([0.0, math.inf]))
    with pytest.raises(ArgumentError, match="all -inf"):
        s.sample(torch.full((3,), -math.inf))
    with pytest.raises(ArgumentError, match=r"\(2, 3\)"):
        s.sample(torch.zeros(2, 3))
    with pytest.raises(ArgumentError, match="floating"):
        s.sample(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ArgumentError, match="list"):
        s.sample([0.0, 1.0])


def test_tiny_temperature_is_greedy_not_nan():
    s = Sampler(SamplerConfig(temperature=1e-30, seed=0))
    for x in _random_logits(5):
        assert s.sample(x) == int(torch.argmax(x))
