"""Llama-family compute: embed, one transformer layer, logits.  Exact mode: f32 everywhere.

Shapes use one alphabet, here and in include/realm.h: T tokens in the call, S cached positions
(pos + T), D hidden, V vocab, H query heads, Hkv key/value heads, Dh head dim, F feed-forward.

Weights come through `Weights`, the seam for the fast 4-bit path: exact mode dequantizes to f32
via the shared cache; a quantized implementation only has to provide the same `linear`.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from .config import ModelConfig
from .storage import Model


class Weights:
    """Exact weights: dequantized once per device into the shared LRU cache."""

    def __init__(self, model: Model, device: torch.device):
        self.model, self.device = model, device

    def get(self, name: str) -> torch.Tensor:
        return self.model.weight(name, self.device)

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:   # x: [T, in] -> [T, out]
        return F.linear(x, self.get(name))


class Rope:
    """cos/sin tables for positions [0, n) on one device, grown on demand.

    The llama GGUF converter permutes Q/K rows so that rotary pairs are adjacent (x[2i], x[2i+1]),
    which is llama.cpp's "normal" rope; qwen2 keeps HF order and pairs i with i + Dh/2 ("neox")."""

    def __init__(self, cfg: ModelConfig, device: torch.device):
        self.neox = cfg.arch == "qwen2"
        self.n_rot = cfg.n_rot
        exponent = torch.arange(0, cfg.n_rot, 2, dtype=torch.int64).float() / cfg.n_rot
        self.inv_freq = (1.0 / (cfg.rope_freq_base ** exponent)).to(device)    # [n_rot/2]
        self.scale = cfg.rope_scale
        self.cos = self.sin = torch.empty(0, cfg.n_rot // 2, device=device)
        self._lock = threading.Lock()

    def tables(self, pos: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:   # -> [T, n_rot/2] each
        if pos + T > self.cos.shape[0]:
            with self._lock:
                n = max(pos + T, 2 * self.cos.shape[0], 256)
                t = torch.arange(n, dtype=torch.int64, device=self.inv_freq.device).float() / self.scale
                freqs = torch.outer(t, self.inv_freq)
                self.cos, self.sin = freqs.cos(), freqs.sin()
        return self.cos[pos:pos + T], self.sin[pos:pos + T]

    def apply(self, x: torch.Tensor, pos: int) -> torch.Tensor:   # x: [T, heads, Dh]
        T, _, Dh = x.shape
        cos, sin = self.tables(pos, T)
        cos, sin = cos[:, None, :], sin[:, None, :]                   # [T, 1, n_rot/2]
        rot, rest = x[..., :self.n_rot], x[..., self.n_rot:]
        if self.neox:
            a, b = rot[..., :self.n_rot // 2], rot[..., self.n_rot // 2:]
            out = torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)
        else:
            pairs = rot.unflatten(-1, (-1, 2))                         # [T, heads, n_rot/2, 2]
            a, b = pairs[..., 0], pairs[..., 1]
            out = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
        return torch.cat((out, rest), dim=-1) if rest.numel() else out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:   # [T, D]
    # Same order as HF LlamaRMSNorm, so exact mode matches transformers to the last bits we can.
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


class Transformer:
    """The per-(model, device) compute.  Stateless: every session passes its own KV cache."""

    def __init__(self, model: Model, device: torch.device):
        self.model, self.cfg, self.device = model, model.config, device
        self.w = Weights(model, device)
        self.rope = Rope(self.cfg, device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:   # ids: [T] int64 -> [T, D]
        # Row gather on the quantized table would avoid a full dequant, but the head of tied
        # models needs the full matrix anyway; the cache keeps one f32 copy for both.
        return self.w.get("token_embd.weight")[ids]

    def layer(self, i: int, x: torch.Tensor, pos: int, kv) -> torch.Tensor:   # x: [T, D] -> [T, D]
        cfg, w, b = self.cfg, self.w, f"blk.{i}."
        T = x.shape[0]
        h = rms_norm(x, w.get(b + "attn_norm.weight"), cfg.rms_eps)
        q, k, v = w.linear(h, b + "attn_q.weight"), w.linear(h, b + "attn_k.weight"), w.linear(h, b + "attn_v.weight")
        if cfg.qkv_bias:
            q, k, v = q + w.get(b + "attn_q.bias"), k + w.get(b + "attn_k.bias"), v + w.get(b + "attn_v.bias")
        q = self.rope.apply(q.view(T, cfg.n_head, cfg.head_dim), pos)        # [T, H, Dh]
        k = self.rope.apply(k.view(T, cfg.n_head_kv, cfg.head_dim), pos)     # [T, Hkv, Dh]
        v = v.view(T, cfg.n_head_kv, cfg.head_dim)
        keys, values = kv.update(i, pos, k.transpose(0, 1), v.transpose(0, 1))   # [Hkv, S, Dh]
        attn = attention(q.transpose(0, 1), keys, values, pos)              # [H, T, Dh]
        x = x + w.linear(attn.transpose(0, 1).reshape(T, cfg.n_embd), b + "attn_output.weight")
        h = rms_norm(x, w.get(b + "ffn_norm.weight"), cfg.rms_eps)
        gate, up = w.linear(h, b + "ffn_gate.weight"), w.linear(h, b + "ffn_up.weight")   # [T, F]
        return x + w.linear(F.silu(gate) * up, b + "ffn_down.weight")

    def logits(self, x: torch.Tensor) -> torch.Tensor:   # x: [T, D] -> [T, V]
        h = rms_norm(x, self.w.get("output_norm.weight"), self.cfg.rms_eps)
        return self.w.linear(h, "token_embd.weight" if self.cfg.tied_output else "output.weight")

    def forward(self, ids: torch.Tensor, pos: int, kv, all_logits: bool) -> torch.Tensor:
        """ids [T] at positions [pos, pos+T) through every layer -> logits [T, V] (or [1, V])."""
        x = self.embed(ids)
        for i in range(self.cfg.n_layer):
            x = self.layer(i, x, pos, kv)
        return self.logits(x if all_logits else x[-1:])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int) -> torch.Tensor:
    """q: [H, T, Dh], k/v: [Hkv, S, Dh] with S = pos + T  ->  [H, T, Dh]."""
    T, S = q.shape[1], k.shape[1]
    if T == 1:
        mask, causal = None, False                     # one query sees every cached position
    elif pos == 0:
        mask, causal = None, True
    else:                                              # query t sits at absolute position pos + t
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=pos)
        causal = False
    return F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, is_causal=causal,
                                          enable_gqa=q.shape[0] != k.shape[0])[0]


_TRANSFORMERS: dict[tuple[int, str, str], Transformer] = {}
_LOCK = threading.Lock()
PRECISIONS = ("exact", "fast")


def transformer_for(model: Model, device: torch.device, precision: str = "exact") -> Transformer:
    """The shared compute for (model, device, precision): "exact" (f32) or "fast" (4-bit, fast.py)."""
    key = (model.id, str(device), precision)
    with _LOCK:
        t = _TRANSFORMERS.get(key)
        if t is None or t.model is not model:
            if precision == "fast":
                from .fast import FastTransformer
                t = FastTransformer(model, device)
            else:
                t = Transformer(model, device)
            _TRANSFORMERS[key] = t
        return t


def forget_model(model_id: int) -> None:
    with _LOCK:
        for key in [k for k in _TRANSFORMERS if k[0] == model_id]:
            del _TRANSFORMERS[key]
