"""Chat templates: render `tokenizer.chat_template` (Jinja) the way HF transformers does.

Same environment as transformers' `apply_chat_template` (utils/chat_template_utils.py): a
sandbox (templates come from model files, i.e. untrusted), trim_blocks + lstrip_blocks, loop
controls, a `tojson` that does not HTML-escape, `raise_exception`, `strftime_now`, and the
`{% generation %}` tag some templates use (here it only renders its body).

    prompt = render_chat(md["tokenizer.chat_template"], [{"role": "user", "content": "hi"}])
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ArgumentError, FormatError


class _TemplateRaised(Exception):
    """The template called raise_exception(): it rejects these messages (the caller's input)."""


def _raise_exception(message):
    raise _TemplateRaised(str(message))


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson HTML-escapes '<' and '>', which would corrupt a prompt
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """jinja's namespace(), refusing underscore names (a way toward Python internals)."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with '_'")


class _Dict:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without handing them the dict type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; we just render it."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                       namespace=_Namespace, dict=_Dict())
    return env


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    # compiled once per template text: a model's template is rendered on every request
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise FormatError(f"chat template: syntax error at line {e.lineno}: {e.message}") from None


def _check_messages(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)):
        raise ArgumentError(f"messages must be a list of dicts, got {type(messages).__name__}")
    if not messages:
        raise ArgumentError("messages is empty: a chat needs at least one message")  # as transformers
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ArgumentError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                got = "missing" if key not in m else f"a {type(m[key]).__name__}"
                raise ArgumentError(f"messages[{i}]['{key}'] must be a str, got {got}")
    # copies, so a template can never reach (or a later edit change) the caller's dicts
    return [dict(m) for m in messages]


def render_chat(template: str, messages: list[dict], *, add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", **extra) -> str:
    """The prompt text for `messages`, as transformers' apply_chat_template(tokenize=False) gives it.

    extra: further template variables (tools, documents, enable_thinking, ...).  A template that
    calls raise_exception() is rejecting the messages: ArgumentError.  A broken template: FormatError.
    """
    if not isinstance(template, str):
        raise ArgumentError(f"template must be a str, got {type(template).__name__}")
    msgs = _check_messages(messages)
    compiled = _compile(template)
    variables = {"tools": None, "documents": None, **extra}
    try:
        return compiled.render(messages=msgs, add_generation_prompt=bool(add_generation_prompt),
                               bos_token=bos_token, eos_token=eos_token, **variables)
    except _TemplateRaised as e:
        raise ArgumentError(f"messages rejected by the chat template: {e}") from None
    except jinja2.TemplateError as e:
        raise FormatError(f"chat template failed: {type(e).__name__}: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as e:
        raise FormatError(f"chat template failed: {type(e).__name__}: {e}") from None
