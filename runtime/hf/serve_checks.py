"""The requests transformers' server through Stitch refuses before its engine
sees them, each with an OpenAI-shaped 400 that names the value and the limit.

NOTE: [requests refused before the engine]
transformers' continuous batching worker is one thread for every request: a
request it cannot run (an empty prompt, a token id past the vocabulary) raises
inside its step, which kills the worker, fails every request in flight and
leaves the server answering 503 to all later ones.  A request whose prompt and
``max_tokens`` the paged cache can never hold fails alone (NOTE: [requests the
paged cache can never hold] in admission.py), but as a bare 500 whose reason
is only in the server's log.  So the launcher checks each request in two
places, and refuses with :class:`RequestRefused` (a 400 whose body is
OpenAI's ``{"error": {"message", "type", "param", "code"}}``):

- :func:`check_body`, when the handler gets the request: the prompt's type,
  an empty text prompt, ``max_tokens``, and the sampling fields;
- :func:`check_tokens`, when the engine is about to get the tokenized prompt:
  no tokens, a token id outside the model's embedding rows, a prompt and
  ``max_tokens`` the cache can never hold, and sampling fields that differ from
  what the running engine applies (transformers' server starts its engine with
  the first request's generation config and applies it to every request, so a
  request's own ``temperature`` or ``top_p`` would be ignored without a word).

What the body asked is carried from the first check to the second in a
context variable (:data:`CURRENT`), which asyncio copies into the task that
serves the request.
"""

from __future__ import annotations

import contextvars
import dataclasses
from typing import Any

from stitch.core.errors import StitchInputError

from .admission import unservable


class RequestRefused(StitchInputError):
    """A request the server refuses with a 400: ``param`` is the request field
    at fault, ``code`` a short machine-readable reason."""

    def __init__(self, message: str, param: str, code: str) -> None:
        super().__init__(message)
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The response body, shaped as OpenAI's errors are."""
        return {
            "error": {
                "message": str(self),
                "type": "invalid_request_error",
                "param": self.param,
                "code": self.code,
            }
        }


@dataclasses.dataclass(frozen=True)
class Asked:
    """What one request's body asked of the engine, once checked."""

    # The prompt's token ids when the client sent ids instead of text.
    token_ids: tuple[int, ...] | None
    # Sampling fields the client set, by name (temperature, top_p).
    sampling: dict[str, float]


CURRENT: contextvars.ContextVar[Asked | None] = contextvars.ContextVar(
    "stitch_serve_request", default=None
)

# Sampling fields a request may set.
_SAMPLING = ("temperature", "top_p")
# Penalties transformers' engine does not apply (its logits processors do not
# include them): refused unless 0.
_PENALTIES = ("frequency_penalty", "presence_penalty")


def check_body(body: dict[str, Any], endpoint: str) -> Asked:
    """Refuse what is wrong with ``body`` alone (``endpoint``: "completions" or
    "chat"); what it asks of the engine."""
    token_ids = _prompt(body) if endpoint == "completions" else None
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or max_tokens < 1
    ):
        raise RequestRefused(
            f"max_tokens={max_tokens!r}: must be a whole number of at least 1",
            "max_tokens",
            "invalid_max_tokens",
        )
    sampling: dict[str, float] = {}
    for name in _SAMPLING:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestRefused(
                f"{name}={value!r}: must be a number", name, "invalid_sampling"
            )
        sampling[name] = float(value)
    for name in _PENALTIES:
        value = body.get(name)
        if value not in (None, 0, 0.0):
            raise RequestRefused(
                f"{name}={value!r}: transformers' continuous batching engine does not "
                "apply it; leave it out or send 0",
                name,
                "unsupported_sampling",
            )
    return Asked(token_ids, sampling)


def _prompt(body: dict[str, Any]) -> tuple[int, ...] | None:
    """The prompt's token ids when it is a list of them; None for text."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
        prompt = prompt[0]  # [[ids]]: one prompt of ids, as OpenAI's clients send
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if prompt == "":
            raise RequestRefused(
                "prompt is empty: there is no token to continue from",
                "prompt",
                "empty_prompt",
            )
        return None
    if isinstance(prompt, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt
    ):
        if not prompt:
            raise RequestRefused(
                "prompt is an empty list of token ids: there is no token to "
                "continue from",
                "prompt",
                "empty_prompt",
            )
        return tuple(prompt)
    raise RequestRefused(
        f"prompt={_short(prompt)}: must be one text or one list of token ids (one "
        "prompt per request)",
        "prompt",
        "invalid_prompt",
    )


def check_tokens(
    token_ids: list[int],
    *,
    vocab_size: int,
    max_new_tokens: int,
    cache: Any | None,
    engine_config: Any,
    asked: Asked | None,
) -> None:
    """Refuse a tokenized prompt the engine cannot run: ``vocab_size`` is the
    model's embedding rows, ``cache`` the running engine's paged cache (None:
    not built yet, the scheduler's admission check then applies), and
    ``engine_config`` the generation config the engine applies to every request."""
    if not token_ids:
        raise RequestRefused(
            "prompt tokenizes to no tokens: there is no token to continue from",
            "prompt",
            "empty_prompt",
        )
    for position, token in enumerate(token_ids):
        if not 0 <= token < vocab_size:
            raise RequestRefused(
                f"prompt: token id {token} at position {position} is outside the "
                f"model's vocabulary [0, {vocab_size})",
                "prompt",
                "token_out_of_vocabulary",
            )
    if cache is not None:
        found = unservable(cache, len(token_ids), max_new_tokens)
        if found is not None:
            field, why = found
            raise RequestRefused(
                f"this request (max_tokens={max_new_tokens}) can never be served: "
                f"{why.replace('max_new_tokens', 'max_tokens')}",
                "prompt" if field == "prompt" else "max_tokens",
                "context_length_exceeded",
            )
    if asked is not None:
        _check_sampling(asked.sampling, engine_config)


def _check_sampling(sampling: dict[str, float], engine_config: Any) -> None:
    samples = bool(getattr(engine_config, "do_sample", False))
    for name, value in sampling.items():
        if not samples:
            neutral = 0.0 if name == "temperature" else 1.0
            if value != neutral:
                raise RequestRefused(
                    f"{name}={value:g}: this server's engine decodes greedily for "
                    "every request (the model's generation config); send "
                    f"{name}={neutral:g} or leave it out",
                    name,
                    "unsupported_sampling",
                )
            continue
        applied = getattr(engine_config, name, None)
        applied = 1.0 if applied is None and name == "top_p" else applied
        if applied is None or abs(value - float(applied)) > 1e-6:
            raise RequestRefused(
                f"{name}={value:g}: this server's engine samples every request with "
                f"{name}={applied} (the model's generation config; transformers' "
                f"engine takes no per-request {name}); leave it out",
                name,
                "unsupported_sampling",
            )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
