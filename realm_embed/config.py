"""ModelConfig: the hyper-parameters compute needs, read from validated GGUF metadata.

Every number is checked against the tensor shapes before anything is allocated from it: a file
whose metadata says 30 layers but holds 12 fails here, naming the key and both values.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import FormatError, UnsupportedError
from .gguf_scan import GGUFFile

# Architectures whose GGUF layout and math are the llama family's (the Q/K rows are permuted
# by the llama converter for "llama" only; the others keep HF order and we rotate accordingly).
LLAMA_FAMILY = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_layer: int          # L
    n_embd: int           # D
    n_ff: int             # F
    n_head: int           # H
    n_head_kv: int        # Hkv
    n_vocab: int          # V
    n_ctx_train: int
    rms_eps: float
    rope_freq_base: float
    n_rot: int            # rotary dims per head (≤ Dh)
    rope_scale: float     # linear position scaling factor (1.0 = none)
    tied_output: bool     # output.weight absent: the head reuses token_embd
    qkv_bias: bool        # qwen2 carries biases on q/k/v

    @property
    def head_dim(self) -> int:  # Dh
        return self.n_embd // self.n_head

    @property
    def n_kv_embd(self) -> int:  # Hkv·Dh
        return self.head_dim * self.n_head_kv


def _int(md: dict, key: str, default: int | None = None, *, minimum: int = 1) -> int:
    value = md.get(key, default)
    if value is None:
        raise FormatError(f"GGUF key '{key}' is missing")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FormatError(f"GGUF key '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _float(md: dict, key: str, default: float) -> float:
    value = md.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value == value) or value <= 0:
        raise FormatError(f"GGUF key '{key}' must be a positive number, got {value!r}")
    return float(value)


def config_from_gguf(gf: GGUFFile) -> ModelConfig:
    md = gf.metadata
    arch = md.get("general.architecture")
    if not isinstance(arch, str):
        raise FormatError(f"GGUF key 'general.architecture' is missing or not a string: {arch!r}")
    if arch not in LLAMA_FAMILY:
        raise UnsupportedError(f"architecture '{arch}' is not supported (supported: {', '.join(LLAMA_FAMILY)})")
    n_embd = _int(md, f"{arch}.embedding_length")
    n_head = _int(md, f"{arch}.attention.head_count")
    n_head_kv = _int(md, f"{arch}.attention.head_count_kv", n_head)
    if n_embd % n_head:
        raise FormatError(f"GGUF key '{arch}.embedding_length' ({n_embd}) is not a multiple of "
                          f"'{arch}.attention.head_count' ({n_head})")
    if n_head % n_head_kv:
        raise FormatError(f"GGUF key '{arch}.attention.head_count' ({n_head}) is not a multiple of "
                          f"'{arch}.attention.head_count_kv' ({n_head_kv})")
    head_dim = n_embd // n_head
    n_rot = _int(md, f"{arch}.rope.dimension_count", head_dim)
    if n_rot > head_dim or n_rot % 2:
        raise FormatError(f"GGUF key '{arch}.rope.dimension_count' ({n_rot}) must be even and <= head dim {head_dim}")
    scale_type = md.get(f"{arch}.rope.scaling.type", "none")
    if scale_type not in ("none", "linear"):
        raise UnsupportedError(f"GGUF key '{arch}.rope.scaling.type' = {scale_type!r} is not supported (none, linear)")
    rope_scale = _float(md, f"{arch}.rope.scaling.factor", 1.0) if scale_type == "linear" else 1.0

    tensors = gf.tensors
    embd = tensors.get("token_embd.weight")
    if embd is None:
        raise FormatError("tensor 'token_embd.weight' is missing")
    n_vocab = embd.shape[0]
    declared_vocab = md.get(f"{arch}.vocab_size")
    tokens = md.get("tokenizer.ggml.tokens")
    for what, value in ((f"{arch}.vocab_size", declared_vocab), ("tokenizer.ggml.tokens (length)",
                                                                   None if tokens is None else len(tokens))):
        if value is not None and value != n_vocab:
            raise FormatError(f"GGUF key '{what}' = {value} disagrees with token_embd.weight rows {n_vocab}")
    n_layer = _int(md, f"{arch}.block_count")
    n_ff = _int(md, f"{arch}.feed_forward_length")
    cfg = ModelConfig(
        arch=arch, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head, n_head_kv=n_head_kv,
        n_vocab=n_vocab, n_ctx_train=_int(md, f"{arch}.context_length", 2048),
        rms_eps=_float(md, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
        rope_freq_base=_float(md, f"{arch}.rope.freq_base", 10000.0), n_rot=n_rot, rope_scale=rope_scale,
        tied_output="output.weight" not in tensors, qkv_bias="blk.0.attn_q.bias" in tensors)
    _check_shapes(cfg, gf)
    return cfg


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor compute reads, with its numpy-order shape."""
    D, F, V, KV = cfg.n_embd, cfg.n_ff, cfg.n_vocab, cfg.n_kv_embd
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (V, D), "output_norm.weight": (D,)}
    if not cfg.tied_output:
        shapes["output.weight"] = (V, D)
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        shapes.update({
            b + "attn_norm.weight": (D,), b + "ffn_norm.weight": (D,),
            b + "attn_q.weight": (D, D), b + "attn_k.weight": (KV, D), b + "attn_v.weight": (KV, D),
            b + "attn_output.weight": (D, D),
            b + "ffn_gate.weight": (F, D), b + "ffn_up.weight": (F, D), b + "ffn_down.weight": (D, F),
        })
        if cfg.qkv_bias:
            shapes.update({b + "attn_q.bias": (D,), b + "attn_k.bias": (KV,), b + "attn_v.bias": (KV,)})
    return shapes


def _check_shapes(cfg: ModelConfig, gf: GGUFFile) -> None:
    for name, shape in expected_shapes(cfg).items():
        info = gf.tensors.get(name)
        if info is None:
            raise FormatError(f"tensor '{name}' is missing (block_count={cfg.n_layer})")
        if tuple(info.shape) != shape:
            raise FormatError(f"tensor '{name}' has shape {tuple(info.shape)}, metadata implies {shape}")
    extra = f"blk.{cfg.n_layer}.attn_norm.weight"
    if extra in gf.tensors:
        raise FormatError(f"tensor '{extra}' exists beyond block_count={cfg.n_layer}")
