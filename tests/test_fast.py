"""Fast mode (4-bit kernels, bf16 activations) against exact mode on the real model.

Agreement, not equality: fast mode rounds activations to bf16, so logits move by ~0.06 on
average; the head refines each position's top logits in f32, so greedy choices agree with exact
mode on almost every position.  The numbers printed here are the ones the README quotes."""
import pytest
import torch

import realm_embed as realm
from realm_embed import cpu_kernels, fast, quant

# Varied text: prose, code, numbers, other languages, markup.
TEXT = (
    "The history of the city goes back to a small fishing village on the river, which grew into a "
    "market town in the twelfth century and became the seat of the regional government in 1848.\n\n"
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "Prices rose 3.5% in March, after 2.9% in February; 1, 2, 3, 5, 8, 13, 21, 34, 55.\n"
    "Die Hauptstadt von Deutschland ist Berlin. La capitale de la France est Paris.\n"
    "<ul><li>milk</li><li>eggs</li></ul> Photosynthesis converts light energy into chemical energy "
    "stored in glucose, releasing oxygen as a by-product. The mitochondria is the powerhouse of the "
    "cell, and ATP is its currency. Q: What is 12 times 12? A: 144. Q: Who wrote Hamlet? A: "
    "William Shakespeare wrote Hamlet around 1600, and it remains one of his most performed plays."
)


def _logits(mid, ids, precision, chunk=None):
    s = realm.create_session(mid, len(ids) + 1, precision=precision)
    try:
        chunk = chunk or len(ids)
        return torch.cat([realm.decode(s, ids[i:i + chunk], all_logits=True) for i in range(0, len(ids), chunk)])
    finally:
        realm.session_free(s)


@pytest.fixture(scope="module")
def text_ids(mid):
    ids = realm.tokenize(mid, TEXT)
    assert len(ids) >= 200
    return ids


@pytest.fixture(scope="module")
def exact_logits(mid, text_ids):
    return _logits(mid, text_ids, "exact")


@pytest.mark.parametrize("chunk", [None, 1, 5], ids=["prefill", "token-by-token", "chunks-of-5"])
def test_fast_agrees_with_exact(mid, text_ids, exact_logits, chunk):
    ours = _logits(mid, text_ids, "fast", chunk)
    assert ours.shape == exact_logits.shape and ours.dtype == torch.float32
    agree = (ours.argmax(-1) == exact_logits.argmax(-1)).float().mean().item()
    diff = (ours - exact_logits).abs()
    print(f"\nfast vs exact ({chunk or 'prefill'}): {len(text_ids)} positions, top-1 agreement "
          f"{agree:.1%}, max |diff| {diff.max():.3f}, mean |diff| {diff.mean():.4f}")
    assert agree >= 0.95
    assert diff.mean() < 0.15 and diff.max() < 1.5
    # the top logit itself is recomputed in f32: much closer than the rest
    top = exact_logits.argmax(-1, keepdim=True)
    assert (ours.gather(1, top) - exact_logits.gather(1, top)).abs().mean() < 0.1


def test_raw_prompt_continues_with_paris_in_fast_mode(mid):
    s = realm.create_session(mid, 64, precision="fast")
    out = realm.generate(s, "The capital of France is", max_tokens=1)
    assert out.text == " Paris"
    realm.session_free(s)


def test_layerwise_and_fused_agree_in_fast_mode(mid):
    ids = realm.tokenize(mid, "The quick brown fox jumps over the lazy dog because it")
    chunks = (ids[:5], ids[5:6], ids[6:])
    # the same chunks both ways: a one-token chunk takes the C kernels on CPU (cpu_kernels.py),
    # whose int8 activations differ from the torch path's bf16 ones by more than 1e-3
    s = realm.create_session(mid, 64, precision="fast")
    fused = torch.cat([realm.decode(s, c, all_logits=True) for c in chunks])
    realm.session_free(s)
    s = realm.create_session(mid, 64, precision="fast")
    L, pos, rows = realm.get_model_info(mid)["n_layer"], 0, []
    for chunk in chunks:
        h = realm.embed_tokens(s, chunk)
        for layer in range(L):
            h = realm.forward_layer(s, layer, h, pos)
        rows.append(realm.compute_logits(s, h))
        pos += len(chunk)
    realm.session_free(s)
    assert (torch.cat(rows) - fused).abs().max() < 1e-3


def test_fork_keeps_precision_and_cache(mid):
    ids = realm.tokenize(mid, "One, two, three, four")
    s = realm.create_session(mid, 32, precision="fast")
    realm.decode(s, ids)
    child = realm.session_fork(s)
    assert child.precision == "fast"
    nxt = realm.tokenize(mid, ", five")
    assert torch.equal(realm.decode(child, nxt), realm.decode(s, nxt))
    realm.session_free(s), realm.session_free(child)


@pytest.mark.parametrize("path", ["torch", "c"])
def test_a_kernel_failure_mid_decode_leaves_a_fast_session_exactly_as_before(mid, kv_state, monkeypatch, path):
    # (argument errors on fast sessions: test_compute.py, parametrized over precision)
    # torch: fast._mm fails a few layers in; c: the C layer step fails after it wrote its K/V.
    if path == "c" and not cpu_kernels.active():
        pytest.skip("CPU kernels not built or disabled")
    monkeypatch.setattr(cpu_kernels, "ENABLED", path == "c")
    s = realm.create_session(mid, 16, precision="fast")
    realm.decode(s, realm.tokenize(mid, "The capital of France is"))
    before = kv_state(s)
    # A failure inside compute, after some layers wrote their K/V: everything is restored.
    calls = {"n": 0}
    real = fast._mm if path == "torch" else cpu_kernels.Decoder.step

    limit = 20 if path == "torch" else 4                     # a few layers in

    def failing(*args):
        calls["n"] += 1
        out = real(*args)                                    # (the C step has written K/V by now)
        if calls["n"] > limit:
            raise RuntimeError("injected kernel failure")
        return out

    if path == "torch":
        monkeypatch.setattr(fast, "_mm", failing)
    else:
        monkeypatch.setattr(cpu_kernels.Decoder, "step", failing)
    with pytest.raises(RuntimeError, match="injected"):
        realm.decode(s, [42])
    assert calls["n"] > 4
    monkeypatch.undo()
    after = kv_state(s)
    assert after[0] == before[0] and torch.equal(after[1], before[1]) and torch.equal(after[2], before[2])
    realm.session_free(s)


def test_precision_is_validated(mid):
    with pytest.raises(realm.ArgumentError, match="precision must be one of 'exact', 'fast', got 'fp8'"):
        realm.create_session(mid, 8, precision="fp8")
    s = realm.create_session(mid, 8)
    assert s.precision == "exact"
    realm.session_free(s)


# ---- the 4-bit layout against our bit-exact dequantization --------------------------------------

def _unpack(q, scale, zero):   # -> [N, K'] f32, w = (q - 8)·scale + zero per group of 32
    return (q - 8) * scale.repeat_interleave(fast.GROUP, 1) + zero.repeat_interleave(fast.GROUP, 1)


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.3.ffn_down.weight"])
def test_q4_1_fields_reproduce_the_dequantized_weight(mid, name):
    model = realm.api.REGISTRY.get(mid)
    q, scale, zero = fast.int4_fields(model, name)
    ref = model.dequantize(name)
    # f32 (q-8)·d + (m + 8d) against d·q + m: equal up to f32 rounding of the regrouped sum
    assert (_unpack(q, scale, zero) - ref).abs().max() < 1e-5 * ref.abs().max()


def test_q8_0_halves_reproduce_the_dequantized_weight(mid):
    model = realm.api.REGISTRY.get(mid)
    q, scale, zero = fast.int4_fields(model, "token_embd.weight")
    rows = slice(0, 512)
    K = q.shape[1] // 2
    w = _unpack(q[rows], scale[rows], zero[rows])
    assert torch.equal(w[:, :K] + w[:, K:], model.dequantize("token_embd.weight")[rows])


def test_q4_0_and_q4_k_fields_match_quant(tmp_path):
    """Synthetic blocks of the other two 4-bit types, through the same path as a model's tensor."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as QT

    class FakeModel:
        def __init__(self, qtype, raw, shape):
            self.qtype, self._raw, self.shape = qtype, raw, shape

        def tensor_info(self, name):
            return type("Info", (), {"shape": self.shape, "ggml_type": self.qtype})

        def raw(self, name):
            return self._raw

    g = torch.Generator().manual_seed(0)
    for qtype, N, K in ((QT.Q4_0, 16, 64), (QT.Q4_K, 16, 256)):
        _, type_size = GGML_QUANT_SIZES[qtype]
        raw = torch.randint(0, 256, (N * K // (32 if qtype == QT.Q4_0 else 256) * type_size,), generator=g,
                            dtype=torch.int32).to(torch.uint8)
        blocks = raw.view(-1, type_size)
        blocks[:, 0:2] = torch.tensor([0x00, 0x2C], dtype=torch.uint8)    # d = 0.0625 (f16)
        if qtype == QT.Q4_K:
            blocks[:, 2:4] = torch.tensor([0x00, 0x28], dtype=torch.uint8)  # dmin = 0.03125
        ref = quant.dequantize(raw, qtype, (N, K))
        q, scale, zero = fast.int4_fields(FakeModel(qtype, raw, (N, K)), "w")
        assert (_unpack(q, scale, zero) - ref).abs().max() < 1e-5 * ref.abs().max(), qtype


def test_int4_kernel_uses_the_formula_we_pack_for():
    """torch's kernel computes w = (q - 8)·scale + zero: check it on random fields."""
    g = torch.Generator().manual_seed(1)
    N, K = 64, 128
    q = torch.randint(0, 16, (N, K), generator=g, dtype=torch.int32)
    scale = (torch.rand(N, K // 32, generator=g) * 0.05).to(torch.bfloat16).float()
    zero = (torch.randn(N, K // 32, generator=g) * 0.1).to(torch.bfloat16).float()
    x = torch.randn(3, K, generator=g).to(torch.bfloat16)
    sz = torch.stack((scale.t(), zero.t()), dim=-1).to(torch.bfloat16).contiguous()
    got = fast._mm(x, fast._pack(q, torch.device("cpu")), sz).float()
    ref = x.float() @ _unpack(q, scale, zero).t()
    assert (got - ref).abs().max() <= ref.abs().max() * 2 ** -8   # bf16 output rounding only


def test_head_packed_by_row_chunks_equals_packing_it_whole(mid):
    """Linear packs one big tensor PACK_ROWS rows at a time (bounded memory); the kernel tiles N
    by 64, so chunks of a multiple of 64 rows must concatenate to the whole tensor's packing."""
    assert fast.PACK_ROWS % 64 == 0
    model = realm.api.REGISTRY.get(mid)
    lin = fast.Linear(model, ("token_embd.weight",), torch.device("cpu"))
    rows = slice(0, 2 * fast.PACK_ROWS + 64)
    q, scale, zero = fast.int4_fields(model, "token_embd.weight", rows)
    whole = fast._pack(q, torch.device("cpu"))
    assert torch.equal(lin.packed[rows], whole)
    sz = torch.stack((scale.t(), zero.t()), dim=-1).to(torch.bfloat16)
    assert torch.equal(lin.sz[:, rows], sz)
