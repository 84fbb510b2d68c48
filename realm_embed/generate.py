"""Generation: prompt -> streamed tokens, with the sampler, stop rules and context limit.

`stream` is the one loop; `generate` drives it with a callback.  Both leave the session holding
the prompt and every token fed back, so a caller can continue the conversation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from .errors import ArgumentError, LimitError
from .sampling import Sampler, SamplerConfig
from .session import SESSIONS, decode


@dataclass
class Completion:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""      # "eos" | "stop" (a stop string) | "length" | "cancelled"
    n_prompt: int = 0


@dataclass(frozen=True)
class TokenEvent:
    id: int
    text: str                    # text made complete by this token (may be "" mid-character)


def _prompt_ids(model, prompt) -> list[int]:
    if isinstance(prompt, str):
        return model.tokenizer.encode(prompt, add_special=True, parse_special=True)
    if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    raise ArgumentError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")


def stream(session, prompt, *, max_tokens: int = 256, sampler: SamplerConfig | None = None,
           stop: Sequence[str] = ()) -> Iterator[TokenEvent]:
    """Yield a TokenEvent per generated token; the generator's return value is the Completion."""
    out = Completion()
    yield from _run(out, session, prompt, max_tokens, sampler, stop)
    return out


def _run(out: Completion, session, prompt, max_tokens, sampler, stop) -> Iterator[TokenEvent]:
    """The generation loop; fills `out` as it goes so a caller that stops early still has it."""
    s = SESSIONS.get(session)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise ArgumentError(f"max_tokens must be a non-negative integer, got {max_tokens!r}")
    if isinstance(stop, str):
        stop = (stop,)
    if any(not isinstance(x, str) or not x for x in stop):
        raise ArgumentError(f"stop must be a list of non-empty strings, got {list(stop)!r}")
    config = sampler or SamplerConfig()
    config.validate()
    tok = s.model.tokenizer
    ids = _prompt_ids(s.model, prompt)
    if not ids:
        raise ArgumentError("prompt is empty: it tokenized to no tokens")
    if s.n_tokens + len(ids) > s.n_ctx:
        raise LimitError(f"prompt of {len(ids)} tokens does not fit: the session holds {s.n_tokens} "
                         f"of n_ctx {s.n_ctx}")
    out.n_prompt = len(ids)
    rng, detok, history = Sampler(config), tok.stream_decoder(), list(ids)
    penalized = history if config.repetition_penalty != 1.0 else ()   # our own ids: no need to re-check them
    logits = decode(s, ids)
    held = ""                      # text that might be the start of a stop string
    while True:
        if len(out.token_ids) >= max_tokens:
            out.finish_reason = "length"
            break
        token = rng.sample(logits, penalized)
        if token in tok.eot_ids:
            out.finish_reason = "eos"
            break
        out.token_ids.append(token)
        history.append(token)
        held += detok.feed(token)
        cut = min((held.find(x) for x in stop if x in held), default=-1)
        if cut >= 0:
            out.text += held[:cut]
            yield TokenEvent(token, held[:cut])
            out.finish_reason = "stop"
            return
        safe = len(held) - _longest_stop_prefix(held, stop)
        out.text += held[:safe]
        yield TokenEvent(token, held[:safe])
        held = held[safe:]
        if s.n_tokens + 1 > s.n_ctx:
            out.finish_reason = "length"
            break
        logits = decode(s, [token])
    tail = held + detok.flush()
    out.text += tail
    if tail:
        yield TokenEvent(-1, tail)


def _longest_stop_prefix(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of some stop string."""
    best = 0
    for x in stop:
        for n in range(min(len(x) - 1, len(text)), best, -1):
            if text.endswith(x[:n]):
                best = n
                break
    return best


def generate(session, prompt, *, max_tokens: int = 256, sampler: SamplerConfig | None = None,
             stop: Sequence[str] = (), on_token: Callable[[int, str], bool | None] | None = None) -> Completion:
    """Run `stream` to the end.  on_token(id, text) returning False stops with "cancelled"."""
    out = Completion()
    for event in _run(out, session, prompt, max_tokens, sampler, stop):
        if on_token is not None and on_token(event.id, event.text) is False:
            out.finish_reason = "cancelled"
            break
    return out
