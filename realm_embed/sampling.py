"""Sampling, apart from the model (gpt-fast's `logits_to_probs` / `sample`).

Order of the steps, as in HF transformers' logits processors: bias -> repetition penalty ->
temperature -> top-k -> top-p -> min-p -> draw.  (llama.cpp applies min-p before temperature;
with temperature 1 the two agree.)  Every step works on a float32 CPU copy of the logits: V
floats per step is cheap next to a forward pass, and one CPU generator makes a seed reproduce
the same tokens on any device.

    sampler = Sampler(SamplerConfig(temperature=0.7, top_p=0.9, seed=1))
    token = sampler.sample(logits, history)          # logits: [V]
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .errors import ArgumentError, RangeError


@dataclass(frozen=True)
class SamplerConfig:
    temperature: float = 0.0          # 0 = greedy (argmax, ties to the lower id)
    top_k: int = 0                    # 0 = off
    top_p: float = 1.0                # 1 = off
    min_p: float = 0.0                # 0 = off
    repetition_penalty: float = 1.0   # 1 = off; >1 discourages tokens already in the history
    seed: int | None = None           # None = a fresh random seed per Sampler

    def validate(self) -> None:
        """Raise ArgumentError naming the first bad field and its value."""
        def real(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise ArgumentError(f"SamplerConfig.{name}={v!r} must be a real number")
            return v
        if real("temperature") < 0 or math.isinf(self.temperature):
            raise ArgumentError(f"SamplerConfig.temperature={self.temperature!r} must be finite and >= 0")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ArgumentError(f"SamplerConfig.top_k={self.top_k!r} must be an integer >= 0 (0 = off)")
        if not 0 < real("top_p") <= 1:
            raise ArgumentError(f"SamplerConfig.top_p={self.top_p!r} must be in (0, 1]")
        if not 0 <= real("min_p") <= 1:
            raise ArgumentError(f"SamplerConfig.min_p={self.min_p!r} must be in [0, 1]")
        if not 0 < real("repetition_penalty") < math.inf:
            raise ArgumentError(f"SamplerConfig.repetition_penalty={self.repetition_penalty!r} must be finite and > 0")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**64):
            raise ArgumentError(f"SamplerConfig.seed={self.seed!r} must be None or an integer in [0, 2**64)")


def _check_logits(logits) -> torch.Tensor:
    """A float32 CPU copy of logits [V]; NaN, +inf or nothing finite is an ArgumentError."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 1 or logits.numel() == 0:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ArgumentError(f"logits must be a non-empty 1-D tensor [V], got {shape}")
    if not logits.is_floating_point():
        raise ArgumentError(f"logits must be floating point, got {logits.dtype}")
    x = logits.detach().to("cpu", torch.float32, copy=True)
    if torch.isnan(x).any():
        raise ArgumentError(f"logits contain NaN (first at id {int(torch.isnan(x).nonzero()[0])})")
    if torch.isposinf(x).any():
        raise ArgumentError(f"logits contain +inf (first at id {int(torch.isposinf(x).nonzero()[0])})")
    if torch.isneginf(x).all():
        raise ArgumentError("logits are all -inf: no token can be sampled")
    return x


def _ids(ids, n: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(list(ids) if not isinstance(ids, torch.Tensor) else ids, dtype=torch.long).reshape(-1)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        bad = int(t[(t < 0) | (t >= n)][0])
        raise RangeError(f"{what} token id {bad} outside the vocabulary [0, {n})")
    return t


def apply_bias(logits: torch.Tensor, bias: Mapping[int, float] | torch.Tensor) -> torch.Tensor:
    """logits + bias, as a new tensor.  bias: {id: value} (-inf bans a token) or a tensor [V]."""
    if isinstance(bias, torch.Tensor):
        if bias.shape != logits.shape:
            raise ArgumentError(f"bias shape {tuple(bias.shape)} does not match logits {tuple(logits.shape)}")
        return logits + bias.to(logits.device, logits.dtype)
    if not isinstance(bias, Mapping):
        raise ArgumentError(f"bias must be a dict {{id: value}} or a tensor, got {type(bias).__name__}")
    out = logits.clone()
    if bias:
        ids = _ids(bias.keys(), logits.shape[-1], "bias")
        out[ids] += torch.tensor([float(v) for v in bias.values()], dtype=out.dtype, device=out.device)
    return out


def apply_repetition_penalty(logits: torch.Tensor, history, penalty: float) -> torch.Tensor:
    """Divide positive logits of seen tokens by penalty, multiply negative ones (HF, llama.cpp)."""
    if not len(history):
        return logits
    ids = _ids(history, logits.shape[-1], "history")   # checked with the penalty off too: a bad id is a bug either way
    if penalty == 1.0:
        return logits
    seen = torch.unique(ids)
    v = logits[seen]
    logits = logits.clone()
    logits[seen] = torch.where(v > 0, v / penalty, v * penalty)
    return logits


def top_k_logits(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest logits, descending, and their ids; ties go to the lower id.  k > V gives V."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ArgumentError(f"k={k!r} must be an integer >= 1")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 1:
        raise ArgumentError("logits must be a 1-D tensor [V]")
    if k == 1 and logits.numel():
        # greedy: one pass.  max propagates NaN, and on ties returns the first (lowest) id.
        value, idx = logits.max(0)
        if torch.isnan(value):
            raise ArgumentError("logits contain NaN")
        return value.view(1), idx.view(1)
    if torch.isnan(logits).any():
        raise ArgumentError("logits contain NaN")
    k = min(k, logits.numel())
    # torch.topk orders ties arbitrarily: take everything >= the k-th value (ties included),
    # then a stable sort of that small set puts equal values in id order.
    kth = torch.topk(logits, k).values[-1]
    cand = torch.nonzero(logits >= kth).squeeze(1)
    order = torch.sort(logits[cand], descending=True, stable=True).indices[:k]
    ids = cand[order]
    return logits[ids], ids


def logits_to_probs(logits: torch.Tensor, config: SamplerConfig) -> torch.Tensor:
    """probs [V] after temperature, top-k, top-p and min-p (temperature must be > 0)."""
    # subtract the max first so a tiny temperature gives -inf gaps, never inf - inf = NaN
    logits = (logits - logits.max()) / config.temperature
    if 0 < config.top_k < logits.numel():
        kth = torch.topk(logits, config.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if config.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True, stable=True)
        # drop a token when the tokens before it already hold top_p of the mass; the top one stays
        drop = (torch.cumsum(sorted_p, 0) - sorted_p) >= config.top_p
        drop[0] = False
        probs = probs.index_fill(0, order[drop], 0.0)
    if config.min_p > 0.0:
        probs = probs.masked_fill(probs < config.min_p * probs.max(), 0.0)
    return probs / probs.sum()


class Sampler:
    """Picks the next token from logits [V].  Owns its generator: same seed, same tokens."""

    def __init__(self, config: SamplerConfig):
        if not isinstance(config, SamplerConfig):
            raise ArgumentError(f"config must be a SamplerConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.seed = config.seed if config.seed is not None else random.SystemRandom().getrandbits(63)
        self._gen = torch.Generator(device="cpu")
        self.reset()

    def reset(self) -> None:
        """Back to the state right after construction (the same seed)."""
        self._gen.manual_seed(self.seed)

    def sample(self, logits: torch.Tensor, history: Sequence[int] = (),
               bias: Mapping[int, float] | torch.Tensor | None = None) -> int:
        x = _check_logits(logits)
        if bias is not None:
            x = apply_bias(x, bias)
            if torch.isnan(x).any() or torch.isposinf(x).any() or torch.isneginf(x).all():
                raise ArgumentError("logits + bias leave no valid distribution (NaN, +inf, or every token banned)")
        x = apply_repetition_penalty(x, history, self.config.repetition_penalty)
        if self.config.temperature == 0.0:
            return int(torch.argmax(x))  # first maximum: ties go to the lower id
        probs = logits_to_probs(x, self.config)
        return int(torch.multinomial(probs, 1, generator=self._gen))
