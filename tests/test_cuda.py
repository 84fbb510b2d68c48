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
