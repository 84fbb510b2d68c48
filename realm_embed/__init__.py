"""realm-embed: GGUF weights once, quantized, host-side; compute with torch; one C ABI for all.

    import realm_embed as realm
    mid = realm.store_model()                       # the embedded default model
    s = realm.create_session(mid)
    prompt = realm.apply_chat_template(mid, [{"role": "user", "content": "What is the capital of France?"}])
    print(realm.generate(s, prompt, max_tokens=32).text)

Shapes: T tokens, D hidden, V vocab, L layers (the same letters as include/realm.h).

Names load lazily (PEP 562), so `import realm_embed` and `python -m realm_embed config` don't pay
for importing torch (~1.5 s) until compute is needed.
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "api": ["apply_chat_template", "create_session", "default_model_path", "detokenize", "get_model_info",
            "get_session", "get_tensor", "list_tensors", "remove_model", "session_fork", "session_free",
            "store_model", "store_model_file", "tensor_info", "token_piece", "tokenize"],
    "errors": ["ArgumentError", "BufferTooSmallError", "BusyError", "ConflictError", "FormatError", "InitError",
               "InternalError", "LimitError", "NotFoundError", "RangeError", "RealmError", "RealmIOError",
               "UnsupportedError"],
    "generate": ["Completion", "TokenEvent", "generate", "stream"],
    "sampling": ["Sampler", "SamplerConfig", "top_k_logits"],
    "session": ["Session", "compute_logits", "decode", "embed_tokens", "forward_layer", "session_reset",
                "session_truncate"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'realm_embed' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
