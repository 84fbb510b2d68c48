"""A tokenizer built from GGUF metadata, on the HF `tokenizers` library.

A GGUF carries no tokenizer.json: only llama.cpp's keys (tokens, merges or scores, token types,
the pre-tokenizer's name).  We rebuild the `tokenizers.Tokenizer` those keys describe, the way
transformers' GGUF loader does (integrations/gguf/gguf_tokenizer_mapping.py), so ids agree with
`AutoTokenizer.from_pretrained(..., gguf_file=...)`; where transformers has no entry for a
pre-tokenizer name we follow llama.cpp's regexes (llama-vocab.cpp).

    tok = Tokenizer.from_metadata(md)
    ids = tok.encode("<|im_start|>user\\nhi<|im_end|>")      # control tokens parsed whole
    text = tok.decode(ids)
"""

from __future__ import annotations

import codecs
import operator
import re
import threading
from functools import lru_cache

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

from .errors import ArgumentError, FormatError, RangeError, UnsupportedError

# llama.cpp token types (gguf.TokenType)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> regexes applied one after another (llama.cpp's regex_exprs), each
# splitting the pieces of the previous one.  The smollm/starcoder family isolates every digit
# first (its tokenizer.json has Digits(individual_digits=True) before the GPT-2 regex).
_PRE_SPLITS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("default", "gpt2", "gpt-2", "mpt", "olmo", "jais", "trillion"), (_GPT2,)),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"),
                    (r"\p{N}", _GPT2)),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "dbrx",
                     "smaug-bpe", "lfm2"), (_LLAMA3,)),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), (_QWEN2,)),
    **dict.fromkeys(("gpt-4o", "llama4"), (_GPT4O,)),
}

# Control tokens whose text ends a turn in llama.cpp (llama_vocab::impl::load, special_eog_ids).
_EOG_TEXTS = frozenset(("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                        "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>"))
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>\Z")


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: printable bytes stand for themselves, the rest are shifted to 256+."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _md_list(md: dict, key: str, n: int | None = None, required: bool = False) -> list | None:
    value = md.get(key)
    if value is None:
        if required:
            raise FormatError(f"tokenizer metadata: missing {key}")
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise FormatError(f"tokenizer metadata: {key} must be an array, got {type(value).__name__}")
    value = value.tolist() if hasattr(value, "tolist") else list(value)
    if n is not None and len(value) != n:
        raise FormatError(f"tokenizer metadata: {key} has {len(value)} entries, expected {n} (one per token)")
    return value


def _md_id(md: dict, key: str, n: int) -> int | None:
    value = md.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise FormatError(f"tokenizer metadata: {key}={value!r} is not an integer")
    value = operator.index(value)
    if not 0 <= value < n:
        raise FormatError(f"tokenizer metadata: {key}={value} outside the vocabulary [0, {n})")
    return value


def _spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Merges implied by a SentencePiece vocabulary: every split of a token into two tokens,
    best score first.  Same order as transformers' `generate_merges`, so ids agree with it."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for token, score in dict(zip(tokens, scores)).items():
        local = [(token[:i], token[i:], score) for i in range(1, len(token))
                 if token[:i] in vocab and token[i:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


_SURROGATE = re.compile("[\ud800-\udfff]")


class Tokenizer:
    """Text <-> token ids for one model.  Immutable after construction; safe to share across threads."""

    def __init__(self, hf: _HFTokenizer, *, model: str, tokens: list[str], token_types: list[int],
                 bos_id: int | None, eos_id: int | None, eot_ids: frozenset[int], add_bos: bool,
                 add_eos: bool, add_space_prefix: bool):
        self._hf = hf
        self._plain: _HFTokenizer | None = None  # same tokenizer with control tokens read as text
        self._lock = threading.Lock()
        self._tokens = tokens
        self._types = token_types
        self._pieces: list[bytes | None] = [None] * len(tokens)
        self.model = model
        self.vocab_size = len(tokens)
        self.bos_id, self.eos_id, self.eot_ids = bos_id, eos_id, eot_ids
        self.add_bos, self.add_eos = add_bos, add_eos
        self._strip_space = add_space_prefix  # SPM decode drops the one space encode added
        self.special_ids = frozenset(i for i, t in enumerate(token_types) if t == _CONTROL or t == _UNKNOWN)

    @classmethod
    def from_metadata(cls, md: dict) -> "Tokenizer":
        """Build from a GGUF metadata dict (key -> str/int/float/bool, list, or numpy array)."""
        if not isinstance(md, dict):
            raise ArgumentError(f"md must be a metadata dict, got {type(md).__name__}")
        kind = md.get("tokenizer.ggml.model")
        if kind not in ("gpt2", "llama"):
            raise UnsupportedError(f"tokenizer.ggml.model={kind!r} is not supported (supported: 'gpt2', 'llama')")
        tokens = _md_list(md, "tokenizer.ggml.tokens", required=True)
        n = len(tokens)
        try:
            joined = "".join(tokens)  # also serves the byte-alphabet check below, in one pass
        except TypeError:
            joined = None
        if n == 0 or joined is None:
            raise FormatError("tokenizer metadata: tokenizer.ggml.tokens must be a non-empty list of strings")
        if _SURROGATE.search(joined):
            # gguf_scan keeps raw-byte tokens as lone surrogates; the tokenizers library can't hold them
            bad = next(i for i, t in enumerate(tokens) if _SURROGATE.search(t))
            raise UnsupportedError(f"tokenizer.ggml.tokens[{bad}] is not valid UTF-8 "
                                   f"({tokens[bad].encode('utf-8', 'surrogateescape')!r}): raw-byte vocabularies are not supported")
        types = _md_list(md, "tokenizer.ggml.token_type", n) or [_NORMAL] * n
        # the few tokens that are not plain vocabulary (control, user-defined, byte, ...)
        marked = [i for i, ty in enumerate(types) if ty != _NORMAL]
        merges = _md_list(md, "tokenizer.ggml.merges")
        bos, eos = _md_id(md, "tokenizer.ggml.bos_token_id", n), _md_id(md, "tokenizer.ggml.eos_token_id", n)
        unk = _md_id(md, "tokenizer.ggml.unknown_token_id", n)
        # llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise
        add_bos = bool(md.get("tokenizer.ggml.add_bos_token", kind == "llama"))
        add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False))
        add_space_prefix = kind == "llama" and bool(md.get("tokenizer.ggml.add_space_prefix", True))

        if merges is not None:
            pairs = [tuple(m.split(" ")) for m in merges]
            bad = next((i for i, p in enumerate(pairs) if len(p) != 2), None)
            if bad is not None:
                raise FormatError(f"tokenizer metadata: tokenizer.ggml.merges[{bad}]={merges[bad]!r} is not 'left right'")

        vocab = dict(zip(tokens, range(n)))  # a repeated token keeps its last id, as in transformers
        if kind == "gpt2":
            if merges is None:
                raise FormatError("tokenizer metadata: missing tokenizer.ggml.merges (required for 'gpt2')")
            pre = md.get("tokenizer.ggml.pre", "default")
            splits = _PRE_SPLITS.get(pre)
            if splits is None:
                raise UnsupportedError(f"tokenizer.ggml.pre={pre!r} is not a known pre-tokenizer")
            if _outside_alphabet().search(joined):
                # a token outside the byte alphabet (a mislabelled control token) is respelled byte-wise
                spell, outside = _bytes_to_unicode(), _outside_alphabet()
                vocab = {"".join(spell[b] for b in t.encode()) if outside.search(t) else t: i
                         for i, t in enumerate(tokens)}
            hf = _HFTokenizer(models.BPE(vocab=vocab, merges=pairs, dropout=None, continuing_subword_prefix="",
                                         end_of_word_suffix="", fuse_unk=False))
            hf.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits]
                + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            hf.decoder = decoders.ByteLevel()
        else:
            if merges is None:
                pairs = _spm_merges(tokens, _md_list(md, "tokenizer.ggml.scores", n, required=True))
            hf = _HFTokenizer(models.BPE(vocab=vocab, merges=pairs, dropout=None, fuse_unk=True, byte_fallback=True,
                                         unk_token=tokens[unk] if unk is not None else None))
            hf.pre_tokenizer = pre_tokenizers.Metaspace(
                replacement="▁", prepend_scheme="first" if add_space_prefix else "never", split=False)
            steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
            hf.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else []))

        # Control/unknown tokens become special added tokens (matched whole, skippable on decode);
        # user-defined ones are added tokens that are always matched whole, as llama.cpp does.
        special = [AddedToken(tokens[i], normalized=False, special=True)
                   for i in marked if types[i] in (_CONTROL, _UNKNOWN) and tokens[i] in vocab]
        user = [AddedToken(tokens[i], normalized=False, special=False)
                for i in marked if types[i] == _USER_DEFINED and tokens[i] in vocab]
        if special:
            hf.add_special_tokens(special)
        if user:
            hf.add_tokens(user)

        eot = {i for i in (eos, _md_id(md, "tokenizer.ggml.eot_token_id", n),
                           _md_id(md, "tokenizer.ggml.eom_token_id", n)) if i is not None}
        eot.update(i for i in marked if tokens[i] in _EOG_TEXTS and types[i] in (_CONTROL, _USER_DEFINED))
        return cls(hf, model=kind, tokens=tokens, token_types=types, bos_id=bos, eos_id=eos,
                   eot_ids=frozenset(eot), add_bos=add_bos, add_eos=add_eos, add_space_prefix=add_space_prefix)

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`.  add_special: BOS (and EOS) as the file asks; parse_special: text
        such as "<|im_start|>" becomes that control token instead of being spelled out."""
        if not isinstance(text, str):
            raise ArgumentError(f"text must be a str, got {type(text).__name__}")
        hf = self._hf if parse_special else self._plain_tokenizer()
        ids = hf.encode(text, add_special_tokens=False).ids
        if add_special and self.add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if add_special and self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def _plain_tokenizer(self) -> _HFTokenizer:
        # Built on first use (a copy costs ~80 ms) rather than toggling a flag on the shared one,
        # which would race with other threads encoding at the same time.
        with self._lock:
            if self._plain is None:
                plain = _HFTokenizer.from_str(self._hf.to_str())
                plain.encode_special_tokens = True
                self._plain = plain
            return self._plain

    def _check_id(self, token_id) -> int:
        try:
            i = operator.index(token_id)
        except TypeError:
            raise ArgumentError(f"token id must be an integer, got {token_id!r}") from None
        if not 0 <= i < self.vocab_size:
            raise RangeError(f"token id {i} outside the vocabulary [0, {self.vocab_size})")
        return i

    def decode(self, ids, *, skip_special: bool = False) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        checked = [self._check_id(i) for i in ids]
        return self._hf.decode(checked, skip_special_tokens=skip_special)

    def token_piece(self, token_id: int) -> bytes:
        """Raw bytes of one token (control tokens give their text, e.g. b"<|im_end|>")."""
        i = self._check_id(token_id)
        piece = self._pieces[i]
        if piece is None:
            text = self._tokens[i]
            if self.model == "gpt2":
                unspell = _byte_decoder()
                piece = bytes(unspell[c] for c in text) if all(c in unspell for c in text) else text.encode()
            elif (m := _BYTE_TOKEN.match(text)) and self._types[i] in (_BYTE, _NORMAL):
                piece = bytes([int(m.group(1), 16)])
            else:
                piece = text.replace("▁", " ").encode()
            self._pieces[i] = piece
        return piece

    def stream_decoder(self, *, skip_special: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special=skip_special)


@lru_cache(maxsize=1)
def _outside_alphabet() -> re.Pattern:
    return re.compile("[^" + "".join(re.escape(c) for c in _bytes_to_unicode().values()) + "]")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    return {c: b for b, c in _bytes_to_unicode().items()}


class StreamDecoder:
    """Incremental detokenization: feed ids one at a time and get back only complete UTF-8 text.

    A character split across tokens (emoji, CJK in a byte-level vocab) is held until its last
    byte arrives, so a stream never shows a U+FFFD that the full decode would not have.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False):
        self._tok = tokenizer
        self._skip = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = tokenizer._strip_space  # drop the one leading space decode() drops

    def feed(self, token_id: int) -> str:
        piece = self._tok.token_piece(token_id)
        if self._skip and token_id in self._tok.special_ids:
            return ""
        return self._emit(self._utf8.decode(piece))

    def flush(self) -> str:
        """Whatever bytes are still held, with invalid sequences replaced; resets the decoder."""
        text = self._emit(self._utf8.decode(b"", final=True))
        self._utf8.reset()
        return text

    def _emit(self, text: str) -> str:
        if self._strip and text:
            self._strip = False
            if text.startswith(" "):
                text = text[1:]
        return text
