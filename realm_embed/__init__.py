"""realm-embed: GGUF weights once, quantized, host-side; compute with torch; one C ABI for all.

    import realm_embed as realm
    mid = realm.store_model()                       # the embedded default model
    s = realm.create_session(mid)
    prompt = realm.apply_chat_template(mid, [{"role": "user", "content": "What is the capital of France?"}])
    print(realm.generate(s, prompt, max_tokens=32).text)

Shapes: T tokens, D hidden, V vocab, L layers (the same letters as include/realm.h).
"""
from .api import (apply_chat_template, create_session, default_model_path, detokenize, get_model_info,
                  get_session, get_tensor, list_tensors, remove_model, session_fork, session_free,
                  store_model, store_model_file, tensor_info, token_piece, tokenize)
from .errors import (ArgumentError, BufferTooSmallError, BusyError, ConflictError, FormatError, InitError,
                     InternalError, LimitError, NotFoundError, RangeError, RealmError, RealmIOError,
                     UnsupportedError)
from .generate import Completion, TokenEvent, generate, stream
from .sampling import Sampler, SamplerConfig, top_k_logits
from .session import (Session, compute_logits, decode, embed_tokens, forward_layer, session_reset,
                      session_truncate)

__version__ = "0.1.0"

__all__ = [name for name in dir() if not name.startswith("_")]
