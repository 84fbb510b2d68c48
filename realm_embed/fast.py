"""Fast mode: 4-bit weights through torch's int4 group-wise kernels, bf16 activations.

Exact mode (model.py) dequantizes every weight to f32.  Fast mode keeps Q4_0 / Q4_1 / Q4_K
weights 4-bit and multiplies them with `_weight_int4pack_mm*` (group size 32), whose layout is
w = (q - 8) · scale + zero per group of 32 along K:

    Q4_0: w = d·(q - 8)              ->  scale d,      zero 0
    Q4_1: w = d·q + m                ->  scale d,      zero m + 8·d
    Q4_K: w = (d·sc)·q - dmin·mn     ->  scale d·sc,   zero 8·d·sc - dmin·mn   (per sub-block)
    Q8_0: w = d·q, q = 16·hi + lo    ->  two 4-bit halves side by side along K, the input
                                         repeated: [hi | lo] with scales (16·d, 0) and (d, 8·d)

so every weight of those types is exact up to its scale and zero rounded to bf16 (the kernel's
fast variant on CPU takes bf16 activations, scales and zeros).  Other types run as dense bf16,
except an output head, which is requantized to 4 bits (its top logits are recomputed anyway).
Logits move by ~0.07 on average from exact mode (bf16 activations).  The output head's bf16
result is refined: each position's top REFINE logits are recomputed in f32 from the GGUF rows,
so greedy choices and top-k / top-p candidates see exact-mode-grade numbers.
On CPU, a one-token step (decode) of a block whose weights are Q4_0/Q4_1/Q8_0/Q4_K/Q5_K/Q6_K
(any mix), and the head for
a few positions, skip all of this: cpu_kernels.py runs them in C on the GGUF's own blocks (one
call per layer, int8 activations, closer to exact than bf16), with the same KV cache tensors.
On CUDA the same layout goes through tinygemm (`_weight_int4pack_mm`, its own packing), after
a one-time check per device; where that fails, fast mode there uses dense bf16 weights.

What keeps a token cheap (decode is memory- and dispatch-bound):
  * Q, K and V are one fused projection, gate and up another (packed once, concatenated);
  * RoPE on Q and K together is one complex multiply; Qwen2's "neox" halves are made adjacent
    pairs by permuting Q/K rows at pack time (a shared permutation leaves q·k unchanged);
  * a block's packed weights are one entry of the shared cache (realm_embed.weights.CACHE, key
    (model id, "blk.N", device, "int4pack")): one lookup per layer per call;
  * chunks of PREFILL_DENSE_MIN tokens or more (prefill) multiply dense bf16 copies instead,
    built on first use and held by the same LRU cache (key (..., "bf16")): for large T the int4
    kernel is 2-3x slower than a bf16 GEMM.

Shapes as in model.py: T tokens, D hidden, H/Hkv heads, Dh head dim, F feed-forward, V vocab,
R refined logits per position.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as QT

from . import cpu_kernels, cuda_graph, quant
from .model import Transformer, attention
from .storage import Model
from .weights import CACHE

GROUP = 32                      # the kernels' quantization group along K
BF16 = torch.bfloat16
INT4_TYPES = (QT.Q4_0, QT.Q4_1, QT.Q4_K)
PREFILL_DENSE_MIN = 20          # T from which dense bf16 beats the int4 kernel (even at ~16-20, 1 thread)
REFINE = 64                     # head logits per position recomputed in f32 (R)
PACK_ROWS = 4096                # rows packed at a time (a multiple of 64)


# ---- 4-bit fields of GGUF blocks ---------------------------------------------------------------

def int4_fields(model: Model, name: str, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weight [N, K] of type Q4_0/Q4_1/Q4_K/Q8_0 (or its `rows`) -> q [N, K'] int32 in [0, 16),
    scale and zero [N, K'/32] f32, with w = (q - 8)·scale + zero.  K' = K, or 2K for Q8_0 (the
    [hi | lo] halves)."""
    info = model.tensor_info(name)
    K = info.shape[1]
    _, type_size = GGML_QUANT_SIZES[info.ggml_type]
    raw = model.raw(name).view(info.shape[0], -1)[rows]                # [N, row bytes]
    N = raw.shape[0]
    blocks = raw.reshape(-1, type_size)                                # [nb, type_size] uint8
    t = info.ggml_type
    if t == QT.Q4_0:
        d = quant._f16(blocks, 0)                                      # [nb, 1]
        q, scale, zero = quant._nibbles(blocks[:, 2:18], 16), d, torch.zeros_like(d)
    elif t == QT.Q4_1:
        d, m = quant._f16(blocks, 0), quant._f16(blocks, 2)
        q, scale, zero = quant._nibbles(blocks[:, 4:20], 16), d, m + 8 * d
    elif t == QT.Q4_K:                                                 # 8 sub-blocks of 32
        d, dmin = quant._f16(blocks, 0), quant._f16(blocks, 2)
        sc, mn = quant._k_scale_min(blocks[:, 4:16])                   # [nb, 8] each
        scale = sc.to(torch.float32) * d
        zero = 8 * scale - mn.to(torch.float32) * dmin
        q = quant._nibbles(blocks[:, 16:144], 32)                      # [nb, 256]
    elif t == QT.Q8_0:
        d = quant._f16(blocks, 0)
        q8 = blocks[:, 2:34].view(torch.int8).to(torch.int32)         # [nb, 32] in [-128, 127]
        hi, lo = ((q8 >> 4) + 8).view(N, K), (q8 & 15).view(N, K)     # q8 = 16·(hi - 8) + lo
        q = torch.cat((hi, lo), dim=1)
        scale = torch.cat(((16 * d).view(N, -1), d.view(N, -1)), dim=1)
        zero = torch.cat((torch.zeros_like(d).view(N, -1), (8 * d).view(N, -1)), dim=1)
        return q, scale, zero
    else:
        raise ValueError(f"{name}: {t.name} has no 4-bit form")
    return q.reshape(N, K).to(torch.int32), scale.reshape(N, -1), zero.reshape(N, -1)


def _packable(model: Model, names, device: torch.device, any_type=False) -> str | None:
    """"int4" or "q8" when the (fused) weights can use the int4 kernel on this device, else None."""
    types = {model.tensor_info(n).ggml_type for n in names}
    kind = "int4" if types <= set(INT4_TYPES) else "q8" if types == {QT.Q8_0} else "any" if any_type else None
    if kind is None or model.tensor_info(names[0]).shape[1] % GROUP:
        return None
    if sum(model.tensor_info(n).shape[0] for n in names) % 16:        # the kernels tile N by 16
        return None
    if device.type == "cuda" and not _cuda_int4_ok(device):
        return None
    return kind


def _pack(q: torch.Tensor, device: torch.device) -> torch.Tensor:   # q: [N, K] int32 -> packed
    if device.type == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
    # CUDA (tinygemm): two nibbles per byte, even element in the high nibble; K tiled by 16·tiles.
    tiles = next(t for t in (8, 4, 2) if q.shape[1] % (t * 16) == 0)
    q = q.to(device)
    return torch.ops.aten._convert_weight_to_int4pack(((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8), tiles)


def _mm(x: torch.Tensor, packed: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:   # [T, K] bf16 -> [T, N] bf16
    if x.is_cuda:
        return torch.ops.aten._weight_int4pack_mm(x, packed, GROUP, sz)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, GROUP, sz)


_cuda_checked: dict[str, bool] = {}


def _cuda_int4_ok(device: torch.device) -> bool:
    """tinygemm needs sm80+ and K % 32 tiles; check once per device that it runs and agrees with
    a dense matmul on our packing.  Where it does not, fast mode on that GPU uses dense bf16."""
    key = str(device)
    if key not in _cuda_checked:
        ok = False
        try:
            g = torch.Generator().manual_seed(0)
            N, K = 64, 192
            q = torch.randint(0, 16, (N, K), generator=g, dtype=torch.int32)
            scale = torch.rand(N, K // GROUP, generator=g) * 0.02 + 0.01
            zero = torch.randn(N, K // GROUP, generator=g) * 0.05
            sz = torch.stack((scale.t(), zero.t()), dim=-1).to(BF16)
            w = (q - 8) * sz[..., 0].t().float().repeat_interleave(GROUP, 1) \
                + sz[..., 1].t().float().repeat_interleave(GROUP, 1)
            x = torch.randn(3, K, generator=g).to(BF16)
            got = _mm(x.to(device), _pack(q, device), sz.to(device).contiguous()).float().cpu()
            ok = bool((got - x.float() @ w.t()).abs().max() < 0.05 * (x.float() @ w.t()).abs().max())
        except Exception:          # noqa: BLE001  any failure means: dense bf16 on this device
            ok = False
        _cuda_checked[key] = ok
    return _cuda_checked[key]


def requant_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f32 [N, K] -> 4-bit groups of 32 (min/max, asymmetric), in int4_fields' form.  Lossy:
    only for output heads of other types, whose top logits Head recomputes exactly anyway."""
    N, K = w.shape
    g = w.view(N, K // GROUP, GROUP)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.int32)
    return q.view(N, K), scale, lo + 8 * scale


# ---- projections ---------------------------------------------------------------------------

def dense(model: Model, names, device: torch.device, row_perm=None) -> torch.Tensor:
    """The fused weight [N, K] in bf16 (dequantized exactly, rounded once)."""
    w = torch.cat([model.dequantize(n, device) for n in names])
    if row_perm is not None:
        w = w[row_perm.to(device)]
    return w.to(BF16).contiguous()


class Linear:
    """One projection, several GGUF tensors fused along N: x [T, K] bf16 -> [T, N] bf16.

    int4 kernel on `packed`/`sz` (Q8_0: the input is repeated, see int4_fields), or dense `w`."""

    __slots__ = ("packed", "sz", "w", "repeat", "nbytes")

    def __init__(self, model: Model, names, device: torch.device, row_perm=None, requantize=False):
        self.packed = self.sz = self.w = None
        kind = _packable(model, names, device)
        if kind is None and requantize and _packable(model, names, device, any_type=True):
            kind = "requant"
        self.repeat = kind == "q8"
        if kind == "requant":
            self._set(*requant_int4(torch.cat([model.dequantize(n) for n in names])), device)
        elif kind and (len(names) > 1 or row_perm is not None or device.type != "cpu"):
            q, scale, zero = (torch.cat(parts) for parts in zip(*(int4_fields(model, n) for n in names)))
            if row_perm is not None:
                q, scale, zero = q[row_perm], scale[row_perm], zero[row_perm]
            self._set(q, scale, zero, device)
        elif kind:
            # One tensor: pack by row chunks, so an output head never holds [V, K'] int32 at once.
            # Chunks of a multiple of 64 rows concatenate into the whole tensor's packing (the CPU
            # kernel tiles N by 64; tests/test_fast.py checks it).
            N = model.tensor_info(names[0]).shape[0]
            parts = [self._set(*int4_fields(model, names[0], slice(r, r + PACK_ROWS)), device)
                     for r in range(0, N, PACK_ROWS)]
            self._set_packed(torch.cat([p for p, _ in parts]), torch.cat([sz for _, sz in parts], dim=1))
        else:
            self.w = dense(model, names, device, row_perm)
            self.nbytes = self.w.nbytes

    def _set(self, q, scale, zero, device):   # q [N, K'] int32, scale/zero [N, K'/32] -> (packed, sz)
        # sz: [K'/32, N, 2], the kernel's layout
        return self._set_packed(_pack(q, device), torch.stack((scale.t(), zero.t()), dim=-1).to(device, BF16).contiguous())

    def _set_packed(self, packed, sz):
        self.packed, self.sz, self.nbytes = packed, sz, packed.nbytes + sz.nbytes
        return packed, sz

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.w is not None:
            return F.linear(x, self.w)
        if self.repeat:
            x = torch.cat((x, x), dim=1)
        return _mm(x, self.packed, self.sz)


class Head:
    """Output head [V, D]: a bf16 pass over every row, then each position's top R logits
    recomputed in f32 from the GGUF rows (the bf16 result is only good to ~2^-9 relative)."""

    __slots__ = ("lin", "rows", "qtype", "nbytes")

    def __init__(self, model: Model, name: str, device: torch.device):
        info = model.tensor_info(name)
        self.lin = Linear(model, (name,), device, requantize=True)
        self.qtype = info.ggml_type
        raw = model.raw(name).view(info.shape[0], -1)                  # [V, row bytes]
        self.rows = raw if device.type == "cpu" else raw.to(device)
        self.nbytes = self.lin.nbytes + (0 if device.type == "cpu" else self.rows.nbytes)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:   # h: [T, D] f32 -> [T, V] f32
        return refine(self.rows, self.qtype, h, self.lin(h.to(BF16)).float())


def refine(rows: torch.Tensor, qtype, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y [T, V] approximate logits of h [T, D] -> y with each position's top R recomputed in f32
    from the head's GGUF rows [V, row bytes] (in place)."""
    T, D = h.shape
    R = min(REFINE, y.shape[1])
    top = y.topk(R, dim=-1, sorted=False).indices                                       # [T, R]
    w = quant.dequantize(rows[top.flatten()], qtype, (T, R, D))                         # [T, R, D]
    return y.scatter_(1, top, torch.bmm(w, h[:, :, None])[..., 0])


class Layer:
    """One block's weights, packed: the unit the cache holds."""

    __slots__ = ("attn_norm", "ffn_norm", "qkv", "o", "gate_up", "down", "qkv_bias", "nbytes")

    def __init__(self, model: Model, i: int, device: torch.device, qk_perm):
        b = f"blk.{i}."
        self.attn_norm = model.dequantize(b + "attn_norm.weight", device)        # [D] f32
        self.ffn_norm = model.dequantize(b + "ffn_norm.weight", device)
        self.qkv = Linear(model, qkv_names(i), device, qk_perm)
        self.o = Linear(model, (b + "attn_output.weight",), device)
        self.gate_up = Linear(model, (b + "ffn_gate.weight", b + "ffn_up.weight"), device)
        self.down = Linear(model, (b + "ffn_down.weight",), device)
        self.qkv_bias = None
        if model.config.qkv_bias:
            bias = torch.cat([model.dequantize(b + f"attn_{p}.bias", device) for p in "qkv"])
            self.qkv_bias = bias[qk_perm.to(device)] if qk_perm is not None else bias
        self.nbytes = sum(t.nbytes for t in (self.attn_norm, self.ffn_norm, self.qkv, self.o, self.gate_up, self.down))


def _norm_bf16(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:   # [T, D] f32 -> bf16
    """RMSNorm in f32 (HF's order), rounded once to bf16 for the kernels."""
    if x.is_cuda:                  # one fused kernel there: a captured step is bound by its kernel count
        return F.rms_norm(x, (x.shape[-1],), weight, eps).to(BF16)
    r = x.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()
    return (x * r).mul_(weight).to(BF16)


def qkv_names(i: int) -> tuple[str, ...]:
    return tuple(f"blk.{i}.attn_{p}.weight" for p in "qkv")


def one_query_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """q: [1, H, Dh], keys/values: [Hkv, S, Dh] -> [Hkv, H/Hkv, Dh] (view it as [H, Dh]).
    mask: [S] additive f32 (0 or -inf), or None.

    The G = H/Hkv query heads that share a KV head go in as G query rows of that head: grouped
    attention without repeating K/V.  With a mask (a captured CUDA step), three plain kernels: on
    an H200 SDPA's memory-efficient f32 kernel took 24 us a layer here, a third of the step."""
    Hkv, S, Dh = keys.shape
    qg = q.reshape(Hkv, -1, Dh)                                                    # [Hkv, G, Dh]
    if mask is None:
        return F.scaled_dot_product_attention(qg[None], keys[None], values[None])[0]
    scores = torch.baddbmm(mask, qg, keys.transpose(1, 2), alpha=Dh ** -0.5)       # [Hkv, G, S]
    return torch.bmm(scores.softmax(-1), values)


def _neox_to_pairs(cfg) -> torch.Tensor | None:
    """Row order of the fused QKV that turns "neox" rotary halves (i, i + Dh/2) into adjacent
    pairs (2i, 2i+1); V rows stay.  None for the llama layout (already pairs)."""
    if cfg.arch != "qwen2":
        return None
    half = cfg.head_dim // 2
    within = torch.stack((torch.arange(half), torch.arange(half) + half), dim=1).flatten()   # [Dh]
    n_qk = cfg.n_head + cfg.n_head_kv
    perm = (torch.arange(n_qk)[:, None] * cfg.head_dim + within).flatten()
    return torch.cat((perm, torch.arange(n_qk * cfg.head_dim, n_qk * cfg.head_dim + cfg.n_kv_embd)))


# ---- the transformer -----------------------------------------------------------------------

class FastTransformer(Transformer):
    """Same primitives as Transformer (embed / layer / logits / forward) on 4-bit weights."""

    def __init__(self, model: Model, device: torch.device):
        super().__init__(model, device)
        cfg = self.cfg
        self.full_rotary = cfg.n_rot == cfg.head_dim          # else: the generic Rope.apply
        self.qk_perm = _neox_to_pairs(cfg) if self.full_rotary else None
        self.n_q, self.n_qk = cfg.n_head * cfg.head_dim, (cfg.n_head + cfg.n_head_kv) * cfg.head_dim
        self.head_name = "token_embd.weight" if cfg.tied_output else "output.weight"
        self.out_norm = model.dequantize("output_norm.weight", device)
        info = model.tensor_info("token_embd.weight")
        self.embd_type, raw = info.ggml_type, model.raw("token_embd.weight").view(info.shape[0], -1)
        self.embd_rows = raw if device.type == "cpu" else raw.to(device)   # [V, row bytes]
        self.rot = torch.empty(0, cfg.head_dim // 2, dtype=torch.complex64, device=device)
        self._rot_lock = threading.Lock()
        # CPU, one token: whole blocks and the head in C (cpu_kernels), where the types allow
        self.cpu = cpu_kernels.Decoder(model, cfg, self.head_name) \
            if device.type == "cpu" and cpu_kernels.available() else None

    # -- weights --

    def block(self, i: int) -> Layer:
        return CACHE.get((self.model.id, f"blk.{i}", str(self.device), "int4pack"),
                         lambda: Layer(self.model, i, self.device, self.qk_perm))

    def head(self) -> Head:
        return CACHE.get((self.model.id, self.head_name, str(self.device), "int4pack"),
                         lambda: Head(self.model, self.head_name, self.device))

    def dense(self, i: int, part: str, names) -> torch.Tensor:
        perm = self.qk_perm if part == "qkv" else None
        return CACHE.get((self.model.id, f"blk.{i}.{part}", str(self.device), "bf16"),
                         lambda: dense(self.model, names, self.device, perm))

    def rotation(self, pos: int, T: int) -> torch.Tensor:   # -> [T, 1, Dh/2] complex64
        if pos + T > self.rot.shape[0]:
            self.rope.tables(pos, T)                        # grows the shared cos/sin tables
            with self._rot_lock:
                self.rot = torch.complex(self.rope.cos, self.rope.sin)
        return self.rot[pos:pos + T, None]

    # -- the primitives --

    def embed(self, ids: torch.Tensor) -> torch.Tensor:   # ids: [T] -> [T, D] f32
        # Decode only the rows asked for, from the GGUF bytes: exact values, no full table.
        return quant.dequantize(self.embd_rows[ids], self.embd_type, (ids.shape[0], self.cfg.n_embd))

    def layer(self, i: int, x: torch.Tensor, pos: int, kv, w: Layer | None = None, rot=None) -> torch.Tensor:
        """x: [T, D] f32 -> [T, D] f32 (a new tensor; x is not modified).  rot: rotation(pos, T)."""
        if x.shape[0] == 1 and self.cpu is not None and cpu_kernels.ENABLED and self.cpu.can_step(i, kv):
            cos, sin = self.rope.tables(pos, 1)                    # [1, Dh/2] each: the exact path's table
            return self.cpu.step(i, x, pos, kv, cos, sin)
        cfg, w = self.cfg, w or self.block(i)
        T, Dh, H = x.shape[0], cfg.head_dim, cfg.n_head
        big = T >= PREFILL_DENSE_MIN
        h = _norm_bf16(x, w.attn_norm, cfg.rms_eps)
        qkv = (F.linear(h, self.dense(i, "qkv", qkv_names(i))) if big else w.qkv(h)).float()   # [T, (H+2Hkv)·Dh]
        if w.qkv_bias is not None:
            qkv += w.qkv_bias
        if self.full_rotary:
            qk = torch.view_as_complex(qkv[:, :self.n_qk].view(T, -1, Dh // 2, 2))    # [T, H+Hkv, Dh/2]
            qk = torch.view_as_real(qk * (self.rotation(pos, T) if rot is None else rot)).view(T, -1, Dh)
            q, k = qk[:, :H], qk[:, H:]
        else:
            q = self.rope.apply(qkv[:, :self.n_q].view(T, H, Dh), pos)
            k = self.rope.apply(qkv[:, self.n_q:self.n_qk].view(T, cfg.n_head_kv, Dh), pos)
        v = qkv[:, self.n_qk:].view(T, cfg.n_head_kv, Dh)
        keys, values = kv.update(i, pos, k.transpose(0, 1), v.transpose(0, 1))    # [Hkv, S, Dh]
        # (rounding to bf16 before the reshape: one kernel, not a copy and a cast)
        if T == 1:
            a = one_query_attention(q, keys, values, kv.mask).to(BF16).reshape(1, cfg.n_embd)
        else:
            a = attention(q.transpose(0, 1), keys, values, pos).to(BF16).transpose(0, 1).reshape(T, cfg.n_embd)
        o = F.linear(a, self.dense(i, "o", (f"blk.{i}.attn_output.weight",))) if big else w.o(a)
        x = x + o                          # f32 + bf16 adds in f32; new: the caller's x stays
        h = _norm_bf16(x, w.ffn_norm, cfg.rms_eps)
        gu = (F.linear(h, self.dense(i, "gate_up", (f"blk.{i}.ffn_gate.weight", f"blk.{i}.ffn_up.weight")))
              if big else w.gate_up(h))                                           # [T, 2F]
        gate, up = gu.split(cfg.n_ff, dim=-1)
        act = F.silu(gate).mul_(up)
        d = F.linear(act, self.dense(i, "down", (f"blk.{i}.ffn_down.weight",))) if big else w.down(act)
        return x.add_(d)

    def logits(self, x: torch.Tensor, head: Head | None = None) -> torch.Tensor:   # x: [T, D] -> [T, V] f32
        h = F.rms_norm(x, (self.cfg.n_embd,), self.out_norm, self.cfg.rms_eps)
        if head is None and self.cpu is not None and self.cpu.head is not None and cpu_kernels.ENABLED \
                and x.shape[0] <= cpu_kernels.HEAD_MAX_T and x.device.type == "cpu":
            return self.cpu.logits(h, REFINE)
        return (head or self.head())(h)

    def forward(self, ids: torch.Tensor, pos: int, kv, all_logits: bool) -> torch.Tensor:
        if ids.shape[0] == 1 and self.full_rotary and cuda_graph.enabled(self.device):
            return cuda_graph.step_for(self, kv)(ids, pos)
        x = self.embed(ids)
        rot = self.rotation(pos, ids.shape[0]) if self.full_rotary else None
        for i in range(self.cfg.n_layer):
            x = self.layer(i, x, pos, kv, None, rot)          # the block is looked up only where the torch path runs
        return self.logits(x if all_logits else x[-1:])
