"""The Python API: module-level functions named like the C ABI, so every host speaks alike."""
from __future__ import annotations

import torch

from . import model as _model
from .chat import render_chat
from .errors import ArgumentError, RangeError
from .gguf_scan import TensorInfo
from .session import SESSIONS, Session
from .storage import REGISTRY, default_model_path  # noqa: F401  (re-exported)


# ---- models ----------------------------------------------------------------------------------

def store_model(source=None, model_id: int = 0) -> int:
    """Store a GGUF and return its id.  source: bytes-like (copied), a path (memory-mapped), or
    None for the embedded default model.  model_id 0 derives the id from the content."""
    return REGISTRY.store(source, model_id)


def store_model_file(path, model_id: int = 0) -> int:
    if path is None:
        raise ArgumentError("path must be a file path, got None")
    return REGISTRY.store(path, model_id)


def get_model_info(model_id: int) -> dict:
    return REGISTRY.get(model_id).info()


def list_tensors(model_id: int) -> list[str]:
    return list(REGISTRY.get(model_id).gguf.tensors)


def tensor_info(model_id: int, name: str) -> TensorInfo:
    return REGISTRY.get(model_id).tensor_info(name)


def get_tensor(model_id: int, name: str, *, device="cpu") -> torch.Tensor:
    """The tensor dequantized to float32, shape in numpy order (as gguf-py reports it)."""
    return REGISTRY.get(model_id).dequantize(name, device)


def remove_model(model_id: int) -> None:
    """Drop one reference; the last frees the model.  BusyError while sessions use it."""
    if REGISTRY.remove(model_id):
        _model.forget_model(model_id)


# ---- sessions --------------------------------------------------------------------------------

def create_session(model_id: int, n_ctx: int = 0, *, device=None, precision: str = "exact") -> Session:
    """A new sequence on the model with its own KV cache of n_ctx positions (0 = default).

    precision: "exact" (weights dequantized to f32; matches transformers to ~1e-4) or "fast"
    (4-bit weights through torch's int4 kernels, bf16 activations: logits ~0.07 from exact on
    average, the top ones recomputed in f32, so greedy picks agree on ~99 % of positions)."""
    return SESSIONS.create(model_id, n_ctx, device, precision)


def get_session(session_id: int) -> Session:
    return SESSIONS.get(session_id)


def session_fork(session) -> Session:
    """A new session holding a copy of this one's cache."""
    return SESSIONS.fork(session)


def session_free(session) -> None:
    SESSIONS.free(session)


# ---- text ------------------------------------------------------------------------------------

def tokenize(model_id: int, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
    if not isinstance(text, str):
        raise ArgumentError(f"text must be a string, got {type(text).__name__}")
    return REGISTRY.get(model_id).tokenizer.encode(text, add_special=add_special, parse_special=parse_special)


def detokenize(model_id: int, ids, *, skip_special: bool = False) -> str:
    return REGISTRY.get(model_id).tokenizer.decode(list(ids), skip_special=skip_special)


def token_piece(model_id: int, token_id: int) -> bytes:
    return REGISTRY.get(model_id).tokenizer.token_piece(token_id)


def apply_chat_template(model_id: int, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    model = REGISTRY.get(model_id)
    template = model.metadata.get("tokenizer.chat_template")
    if not isinstance(template, str):
        raise RangeError(f"model {model.id:#x} has no chat template (tokenizer.chat_template)")
    tok = model.tokenizer
    piece = lambda i: "" if i is None else tok.token_piece(i).decode("utf-8", "replace")  # noqa: E731
    return render_chat(template, messages, add_generation_prompt=add_generation_prompt,
                       bos_token=piece(tok.bos_id), eos_token=piece(tok.eos_id))
