"""The points where a stitching built beside forwards lets them go first
(NOTE: [Dynamo's graph serves while the stitching is built], pipeline/tiered/dynamo_first.py).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

_GIVE_WAY: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "stitch_give_way", default=None
)


def give_way() -> None:
    """Let forwards of Dynamo's graph in flight go first, where this thread
    builds a stitching beside them (a no-op anywhere else)."""
    hook = _GIVE_WAY.get()
    if hook is not None:
        hook()


@contextlib.contextmanager
def giving_way(hook: Callable[[], None]) -> Iterator[None]:
    token = _GIVE_WAY.set(hook)
    try:
        yield
    finally:
        _GIVE_WAY.reset(token)
