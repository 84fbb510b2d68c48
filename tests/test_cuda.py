"""CUDA path = CPU path: same greedy tokens, logits within tolerance.  Skips without a GPU.

On a GPU machine: python -m pytest -q tests/test_cuda.py
"""
import pytest
import torch

import realm_embed as realm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _run(mid, device, prompt):
    s = realm.create_session(mid, 128, device=device)
    logits = realm.decode(s, realm.tokenize(mid, prompt, add_special=False), all_logits=True).cpu()
    realm.session_reset(s)
    out = realm.generate(s, prompt, max_tokens=24)
    # layer by layer, hidden state staying on the device
    realm.session_reset(s)
    ids = realm.tokenize(mid, prompt, add_special=False)
    h = realm.embed_tokens(s, ids)
    for layer in range(realm.get_model_info(mid)["n_layer"]):
        h = realm.forward_layer(s, layer, h, 0)
    layerwise = realm.compute_logits(s, h).cpu()
    realm.session_free(s)
    return logits, out.token_ids, layerwise


def test_cuda_matches_cpu(mid):
    prompt = realm.apply_chat_template(mid, [{"role": "user", "content": "What is the capital of France?"}])
    cpu_logits, cpu_tokens, _ = _run(mid, "cpu", prompt)
    gpu_logits, gpu_tokens, gpu_layerwise = _run(mid, "cuda", prompt)
    diff = (cpu_logits - gpu_logits).abs().max().item()
    print(f"max |cpu - cuda| logit difference: {diff:.2e}")
    assert diff < 1e-2
    assert (gpu_layerwise - gpu_logits).abs().max().item() < 1e-2
    assert gpu_tokens == cpu_tokens
    assert "Paris" in realm.detokenize(mid, gpu_tokens)


def test_cuda_dequantize_matches_cpu(mid):
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight"):
        assert torch.equal(realm.get_tensor(mid, name), realm.get_tensor(mid, name, device="cuda").cpu())


# ---- fast mode: tinygemm int4 and the captured decode step ----------------------------------

def _greedy(mid, device, prompt, n, graphs, monkeypatch, precision="fast"):
    monkeypatch.setenv("REALM_CUDA_GRAPHS", "1" if graphs else "0")
    s = realm.create_session(mid, 128, device=device, precision=precision)
    try:
        logits = [realm.decode(s, realm.tokenize(mid, prompt, add_special=False))]
        toks = [int(logits[-1].argmax())]
        for _ in range(n - 1):
            logits.append(realm.decode(s, [toks[-1]]))
            toks.append(int(logits[-1].argmax()))
        return toks, torch.stack(logits).cpu(), s.kv.graph
    finally:
        realm.session_free(s)


def test_cuda_int4_kernel_is_used(mid):
    from realm_embed import fast
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        pytest.skip("tinygemm needs sm80+")
    assert fast._cuda_int4_ok(torch.device("cuda"))
    layer = _cuda_transformer(mid, "fast").block(0)
    assert layer.qkv.packed is not None and layer.qkv.w is None


def _cuda_transformer(mid, precision):
    from realm_embed.model import transformer_for
    from realm_embed.storage import REGISTRY
    return transformer_for(REGISTRY.get(mid), torch.device("cuda"), precision)


def test_graph_decode_equals_eager_decode(mid, monkeypatch):
    prompt = "The capital of France is Paris. The capital of Italy is"
    eager, eager_logits, no_graph = _greedy(mid, "cuda", prompt, 24, False, monkeypatch)
    graph, graph_logits, step = _greedy(mid, "cuda", prompt, 24, True, monkeypatch)
    assert no_graph is None and step is not None and step.graph is not None, "the graph was not captured"
    assert graph == eager
    diff = (graph_logits - eager_logits).abs()
    print(f"graph vs eager (fast, cuda): max |diff| {diff.max():.3f}, mean {diff.mean():.4f}")
    assert diff.mean() < 0.15 and diff.max() < 1.5          # bf16 noise: the graph attends with its own kernels


def test_compiled_graph_decode_equals_eager_decode(mid, monkeypatch):
    from realm_embed import cuda_graph
    monkeypatch.setenv("REALM_CUDA_COMPILE", "1")
    prompt = "The capital of France is Paris. The capital of Italy is"
    eager, eager_logits, _ = _greedy(mid, "cuda", prompt, 16, False, monkeypatch)
    compiled, compiled_logits, step = _greedy(mid, "cuda", prompt, 16, True, monkeypatch)
    assert not cuda_graph._compile_broken and step.graph is not None
    diff = (compiled_logits - eager_logits).abs()
    print(f"compiled graph vs eager (fast, cuda): max |diff| {diff.max():.3f}, mean {diff.mean():.4f}")
    assert compiled == eager
    assert diff.mean() < 0.15 and diff.max() < 1.5


def test_fast_cuda_agrees_with_exact_cpu(mid, monkeypatch):
    prompt = "The capital of France is"
    fast_toks, fast_logits, _ = _greedy(mid, "cuda", prompt, 8, True, monkeypatch)
    exact_toks, exact_logits, _ = _greedy(mid, "cpu", prompt, 8, False, monkeypatch, precision="exact")
    diff = (fast_logits - exact_logits).abs()
    print(f"fast cuda vs exact cpu: {sum(a == b for a, b in zip(fast_toks, exact_toks))}/8 greedy tokens "
          f"equal, max |diff| {diff.max():.3f}, mean {diff.mean():.4f}")
    assert realm.detokenize(mid, fast_toks[:1]) == " Paris"
    assert fast_toks[0] == exact_toks[0]
    assert diff[0].mean() < 0.15 and diff[0].max() < 1.5


def test_sessions_interleaved_keep_their_own_graphs(mid, monkeypatch):
    """16 sessions decoding round-robin give each the tokens it gets alone."""
    monkeypatch.setenv("REALM_CUDA_GRAPHS", "1")
    prompts = [f"Question {i}: name a colour. Answer:" for i in range(16)]
    alone = [_greedy(mid, "cuda", p, 6, True, monkeypatch)[0] for p in prompts[:3]]
    sessions = [realm.create_session(mid, 128, device="cuda", precision="fast") for _ in prompts]
    try:
        toks = [[int(realm.decode(s, realm.tokenize(mid, p, add_special=False)).argmax())]
                for s, p in zip(sessions, prompts)]
        for _ in range(5):
            for s, t in zip(sessions, toks):
                t.append(int(realm.decode(s, [t[-1]]).argmax()))
        assert toks[:3] == alone
        assert len({id(s.kv.graph) for s in sessions}) == 16
    finally:
        for s in sessions:
            realm.session_free(s)


def test_graph_after_truncate_and_fork(mid, monkeypatch):
    monkeypatch.setenv("REALM_CUDA_GRAPHS", "1")
    ids = realm.tokenize(mid, "One, two, three, four, five, six,", add_special=False)
    s = realm.create_session(mid, 64, device="cuda", precision="fast")
    ref = realm.create_session(mid, 64, device="cuda", precision="fast")
    try:
        for t in ids:                                     # all through the graph
            realm.decode(s, [t])
        realm.session_truncate(s, 4)                      # stale K/V past 4 stay in the cache
        child = realm.session_fork(s)
        for t in ids[:4]:
            realm.decode(ref, [t])
        for t in ids[4:7]:
            a, b, c = realm.decode(s, [t]), realm.decode(child, [t]), realm.decode(ref, [t])
            assert int(a.argmax()) == int(b.argmax()) == int(c.argmax())
            assert (a - c).abs().max() < 1.0
        realm.session_free(child)
    finally:
        realm.session_free(s)
        realm.session_free(ref)
