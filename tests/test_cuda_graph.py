"""The static decode step that CUDA graphs capture (realm_embed/cuda_graph.py).

Its logic (position as a tensor, K/V written with index_copy_, attention over the whole cache
under a mask) runs eagerly on the CPU too, so it is checked here on every machine; the captured
graph itself needs a GPU (tests/test_cuda.py)."""
import pytest
import torch

import realm_embed as realm
from realm_embed import cuda_graph


@pytest.fixture
def no_c_kernels(monkeypatch):
    from realm_embed import cpu_kernels
    monkeypatch.setattr(cpu_kernels, "ENABLED", False)   # the torch layer: the one the graph captures


def _static_decode(s, ids):
    """Append ids one token at a time through a non-captured GraphStep -> logits [T, V]."""
    step = cuda_graph.GraphStep(s.tf, s.kv, capture=False)
    rows = []
    for t in ids:
        rows.append(step(torch.tensor([t]), s.n_tokens))
    return torch.cat(rows)


def test_static_step_equals_the_eager_step(mid, no_c_kernels):
    ids = realm.tokenize(mid, "The capital of France is Paris, and the capital of Italy is")
    a = realm.create_session(mid, 64, precision="fast")
    b = realm.create_session(mid, 64, precision="fast")
    try:
        realm.decode(a, ids[:3])                         # a prefix through the normal (prefill) path
        realm.decode(b, ids[:3])
        eager = torch.stack([realm.decode(a, [t]) for t in ids[3:]])
        static = _static_decode(b, ids[3:])
        assert b.kv.filled == a.kv.filled == [len(ids)] * len(a.kv.filled)
        # Attention over the masked whole cache sums in another order than over the slice (~1e-7),
        # and bf16 activations turn that into rounding flips: equal first step, then noise-level.
        assert torch.equal(static[0], eager[0])
        assert torch.equal(static.argmax(-1), eager.argmax(-1))
        diff = (static - eager).abs()
        assert diff.mean() < 0.15 and diff.max() < 1.5          # the bounds fast vs exact meets
        n = len(ids)                                      # layer 0's K/V see no attention: bit-equal
        assert torch.equal(b.kv.k[0, :, :n], a.kv.k[0, :, :n]) and torch.equal(b.kv.v[0, :, :n], a.kv.v[0, :, :n])
        assert torch.allclose(b.kv.k[:, :, :n], a.kv.k[:, :, :n], atol=0.2)
    finally:
        realm.session_free(a)
        realm.session_free(b)


def test_masked_attention_equals_the_slice():
    from realm_embed.fast import one_query_attention
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 9, 64, generator=g), torch.randn(3, 40, 64, generator=g), torch.randn(3, 40, 64, generator=g)
    k[:, 10:], v[:, 10:] = 1e4, -1e4                      # past the position: must not count
    mask = torch.where(torch.arange(40) <= 9, 0.0, float("-inf"))
    masked = one_query_attention(q, k, v, mask).reshape(9, 64)
    assert (masked - one_query_attention(q, k[:, :10], v[:, :10]).reshape(9, 64)).abs().max() < 1e-5
    # GQA: query head h reads KV head h // 3
    ref = torch.softmax(q[0, 4] @ k[1, :10].T / 8, -1) @ v[1, :10]
    assert (masked[4] - ref).abs().max() < 1e-4


def test_static_step_masks_positions_past_pos(mid, no_c_kernels):
    """After a truncate, stale K/V past the position stay in the cache; the mask must hide them."""
    ids = realm.tokenize(mid, "One two three four five six seven")
    s = realm.create_session(mid, 32, precision="fast")
    fresh = realm.create_session(mid, 32, precision="fast")
    try:
        realm.decode(s, ids)
        realm.session_truncate(s, 3)
        s.kv.k[:, :, 3:].fill_(1e4)                       # poison: attended, it would dominate
        s.kv.v[:, :, 3:].fill_(1e4)
        realm.decode(fresh, ids[:3])
        ours, ref = _static_decode(s, ids[3:5]), _static_decode(fresh, ids[3:5])
        assert torch.equal(ours.argmax(-1), ref.argmax(-1)) and (ours - ref).abs().max() < 1.0
    finally:
        realm.session_free(s)
        realm.session_free(fresh)


def test_graphs_only_on_cuda():
    assert not cuda_graph.enabled(torch.device("cpu"))


def test_freeing_a_session_releases_its_cache_without_gc(mid, no_c_kernels):
    """The captured step and the cache point at each other; free() must break that, or a server's
    freed sessions would hold their (GPU) caches until the next garbage collection."""
    import gc
    import weakref
    s = realm.create_session(mid, 32, precision="fast")
    realm.decode(s, realm.tokenize(mid, "One two"))
    s.kv.graph = cuda_graph.GraphStep(s.tf, s.kv, capture=False)     # what step_for attaches on CUDA
    cache = weakref.ref(s.kv)
    gc.disable()
    try:
        realm.session_free(s)
        assert cache() is None
    finally:
        gc.enable()
