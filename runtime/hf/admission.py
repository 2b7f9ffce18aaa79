"""Requests that transformers' paged cache can never hold, refused by name when
they reach the engine, so that the engine keeps serving the others.

NOTE: [requests the paged cache can never hold]
transformers' engine (5.17 to 5.24) admits every request.  One whose prompt is longer
than the whole cache, or whose prompt and ``max_new_tokens`` outgrow it, is
scheduled in chunks until the cache is full; then no request can get a block,
none can be offloaded, and ``prepare_next_batch`` raises "No requests can be
scheduled and no requests can be offloaded.": a fatal error of the generation
loop, which fails every request still in flight with that message (it names
neither the request nor a size).  The engine catches an error raised while it
admits a request (``add_waiting_request``) and fails that request alone, with
the error's message; so :func:`scheduler_type` registers a subclass of the
user's scheduler whose ``add_waiting_request`` refuses a request that would
need more blocks than the cache has, even empty.  A request is refused for its
``max_new_tokens`` too, though it might stop earlier (an end-of-sequence
token): its ``max_new_tokens`` is what the engine may have to store, and
failing it midway would take the others with it.  Requests that fit alone but
not together wait or are offloaded by the engine, as without Stitch.

The subclass is registered in transformers' ``SCHEDULER_MAPPING`` under a name
of its own (``stitch_<type>``): a new entry, so no other engine in the process
changes.
"""

from __future__ import annotations

from typing import Any

from stitch.core.errors import StitchConfigError, StitchRuntimeError

from .engine_compat import fits, page_size

PREFIX = "stitch_"


def capacity(cache: Any, tokens: int) -> int:
    """The most tokens, up to ``tokens``, that one request can store in the
    whole (empty) cache (sliding-window layers need no more past their window)."""
    low, high = 0, tokens + 1
    while high - low > 1:
        mid = (low + high) // 2
        if fits(cache, mid):
            low = mid
        else:
            high = mid
    return low


def unservable(cache: Any, prompt: int, max_new_tokens: int) -> tuple[str, str] | None:
    """Why a request of ``prompt`` tokens and ``max_new_tokens`` can never be
    stored in ``cache``, as ``(field at fault, reason)`` (the field: "prompt"
    or "max_new_tokens"), or None when it can (the scheduler's admission check
    and the server's request check, runtime/hf/serve_checks.py, both ask)."""
    # The last generated token is sampled, never stored.
    stored = prompt + (max_new_tokens - 1 if max_new_tokens else 0)
    if fits(cache, stored):
        return None
    most = capacity(cache, stored)
    page = page_size(cache)
    sizes = (
        f"the paged cache holds at most {most} tokens of one request "
        f"(num_blocks={cache.num_blocks}, page_size={page})"
    )
    if prompt > most:
        return "prompt", (
            f"its prompt of {prompt} tokens does not fit: {sizes}; shorten the "
            "prompt or raise num_blocks"
        )
    return "max_new_tokens", (
        f"its prompt of {prompt} tokens and max_new_tokens={max_new_tokens} need "
        f"{stored} cached tokens, but {sizes}: token {most + 1} could never get a "
        "block; lower max_new_tokens or raise num_blocks"
    )


def refuse_unservable(cache: Any, state: Any) -> None:
    """Raise, naming the request and its sizes, when ``state`` can never be stored."""
    found = unservable(cache, len(state.initial_tokens), state.max_new_tokens)
    if found is not None:
        raise StitchRuntimeError(f"request {state.request_id!r}: {found[1]}")


def scheduler_type(name: str) -> str:
    """The registered name of scheduler ``name`` refusing what the cache can
    never hold (NOTE: [requests the paged cache can never hold])."""
    from transformers.generation.continuous_batching.scheduler import (
        SCHEDULER_MAPPING,
    )

    if name.startswith(PREFIX) and name in SCHEDULER_MAPPING:
        return name
    base = SCHEDULER_MAPPING.get(name)
    if base is None:
        raise StitchConfigError(
            f"scheduler_type={name!r} is not one of transformers' schedulers "
            f"{sorted(n for n in SCHEDULER_MAPPING if not n.startswith(PREFIX))}"
        )
    registered = PREFIX + name
    if registered not in SCHEDULER_MAPPING:

        def add_waiting_request(self: Any, state: Any) -> None:
            refuse_unservable(self.cache, state)
            base.add_waiting_request(self, state)

        SCHEDULER_MAPPING[registered] = type(
            f"Stitch{base.__name__}",
            (base,),
            {
                "add_waiting_request": add_waiting_request,
                "__doc__": f"{base.__name__}, refusing requests the cache can never hold.",
            },
        )
    return registered
