"""The post-grad pass Inductor runs on each piece: Stitch's own passes, then the configured ones.

NOTE: [custom passes go through post_grad_custom_post_pass]
Inductor runs ``config.post_grad_custom_post_pass`` on every graph it compiles,
after its own post-grad passes (as vLLM's PostGradPassManager does).  Inductor's
FX graph cache accepts only a ``CustomGraphPass`` there and keys on its
``uuid()``; a pass it cannot key makes Inductor bypass its cache, and
``standalone_compile`` then has no artifact to save.  So the configured passes
run behind one ``CustomGraphPass`` whose uuid combines theirs.  This module
imports Inductor: the compiler imports it when it first compiles.

NOTE: [Stitch's own passes run on every piece]
Some of what Inductor decides for a whole graph it decides otherwise for a
piece, because a piece returns values the whole graph keeps inside
(NOTE: [a piece's residual add stays out of its GEMM]).  :data:`STITCH_PASSES`
puts those decisions back; they run on every piece, before the configured
passes (which see the graph Stitch compiles), and enter the hook's uuid, so
Inductor's cache tells the pieces compiled with them from those compiled
without, and every piece's compile key (``own.own_passes_key``), so that
Stitch's cache does too.  An Inductor option ``post_grad_custom_post_pass`` of the user's own
takes the hook instead, and then they do not run (the configured passes are
refused beside it: ``checked_passes``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import torch.fx as fx

from ..compat.inductor import CustomGraphPass
from .base import InductorPassError, pass_name, pass_uuid
from .own import STITCH_PASSES

log = logging.getLogger("stitch")


def with_piece_passes(
    options: dict[str, Any], configured: Sequence[Any]
) -> dict[str, Any]:
    """Inductor's ``options`` with Stitch's own passes, then ``configured``, as its
    post-grad pass, unless ``options`` names a post-grad pass of its own."""
    if "post_grad_custom_post_pass" in options:
        return dict(options)
    passes = [*(cls() for cls in STITCH_PASSES), *configured]
    return {**options, "post_grad_custom_post_pass": PostGradPasses(passes)}


class PostGradPasses(CustomGraphPass):
    """Runs each configured pass on the post-grad graph; errors name the pass."""

    def __init__(self, passes: Sequence[Any]) -> None:
        self.passes = list(passes)
        self.uuids = [pass_uuid(p) for p in self.passes]

    def __call__(self, graph: fx.Graph) -> None:
        for p, uuid in zip(self.passes, self.uuids, strict=True):
            try:
                p(graph)
                graph.lint()
            except InductorPassError:
                raise
            except Exception as exc:
                raise InductorPassError(pass_name(p), uuid, exc) from exc
            log.debug("stitch: ran Inductor pass %s", pass_name(p))

    def uuid(self) -> str:
        return combined_uuid(self.uuids)


def combined_uuid(uuids: Sequence[str]) -> str:
    return hashlib.sha256("|".join(uuids).encode()).hexdigest()


def find_pass_error(exc: BaseException) -> InductorPassError | None:
    """The :class:`InductorPassError` behind ``exc`` (Inductor wraps what passes raise)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, InductorPassError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "inner_exception", None)]
    return None
