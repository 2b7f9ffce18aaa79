"""A landed piece whose compile added guards on its runtime size alone.

NOTE: [guards a landing adds on the size alone]
On a GPU, Inductor picks 32-bit indexing for a Triton kernel when the sizes
fit and guards that they keep fitting (``64*s72 <= 2147483647``: torch's
``can_use_32bit_indexing``).  A cold call adds such guards to Dynamo's graph;
a tiered start's worker compiles after the graph returned, so they are not
among the guards this process checks, and a piece compiled under them was left
uncompiled (every piece with a Triton kernel, on every GPU start).  Where every
added guard names only the piece's runtime size (the symbol at its
``size_index``), the guards are a property of the size: the piece swaps in
with a predicate, its compiled runnables serve the sizes where the guards hold
and its uncompiled ones the rest.  Dispatch is per size and memoized, so the
predicate runs once per size, never per call.  A guard over any other symbol,
or one that does not parse, still leaves the piece uncompiled; the entry
records every guard, and the next start checks them as Dynamo guards.

The guards arrive as recorded text (the worker's report, the fleet store's
index), which this process did not write: they are read by the codec's one
reader, ``read_guard`` (compat/guard_codec.py), never by sympy's parser, and
evaluated at a size under its bounds (NOTE: [a recorded guard is bounded
before anything is computed], compat/guard_bounds.py).  Structural text
decodes to torch's own functions (NOTE: [guards are recorded by structure,
not printed]); an older entry's printed text reads only where it is
unambiguous (NOTE: [which old text guards still read]).  A guard the codec
refuses leaves the piece uncompiled, with a warning saying why.  Symbols are
matched by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.fx as fx

from ...compat.guard_bounds import evaluate
from ...compat.guard_codec import GuardCodecError, read_guard
from ..piecewise import PiecewiseBackend, Runnable


def size_symbol(graph: fx.GraphModule, size_index: int | None) -> Any:
    """The sympy symbol of the piece's runtime size, or None."""
    if size_index is None:
        return None
    placeholders = [n for n in graph.graph.nodes if n.op == "placeholder"]
    if size_index >= len(placeholders):
        return None
    meta = placeholders[size_index].meta
    value = meta.get("example_value", meta.get("val"))
    expr = getattr(getattr(value, "node", None), "expr", None)
    return expr if getattr(expr, "is_Symbol", False) else None


def size_predicate(
    graph: fx.GraphModule, size_index: int | None, guards: Sequence[str]
) -> Callable[[int], bool] | None:
    """Whether ``guards`` hold at a size, when they name the piece's runtime size
    alone (NOTE: [guards a landing adds on the size alone]); else None (the
    piece stays uncompiled; :func:`refused_guard` says why, where the codec
    refused one)."""
    import sympy

    symbol = size_symbol(graph, size_index)
    if symbol is None:
        return None
    try:
        parsed = [read_guard(g, {symbol.name: symbol}) for g in guards]
    except GuardCodecError:
        return None
    names = {str(symbol)}
    if any(
        {str(s) for s in getattr(p, "free_symbols", {None})} - names for p in parsed
    ):
        return None

    def holds(size: int) -> bool:
        try:
            return all(
                evaluate(p, {s: size for s in p.free_symbols}) is sympy.true
                for p in parsed
            )
        except GuardCodecError:  # past the bounds at this size, or sympy
            return False  # refused it: the uncompiled piece serves

    return holds


def refused_guard(guards: Sequence[str]) -> str:
    """Why the codec refuses one of ``guards`` (read over no known symbols,
    which the structural text names itself), or "" where it reads them all."""
    for text in guards:
        try:
            read_guard(text, {})
        except GuardCodecError as exc:
            return str(exc)
    return ""


class SizeGuardedPiece(PiecewiseBackend):
    """A swapped piece whose compiled runnables hold only where ``holds(size)``;
    its uncompiled piece (``fallback``) serves the other sizes."""

    holds: Callable[[int], bool]
    fallback: PiecewiseBackend

    def runnable_for(self, size: int) -> Runnable:
        if self.holds(size):
            return super().runnable_for(size)
        fn = self._by_size[size] = self.fallback.runnable_for(size)
        return fn


def guard_piece(
    backend: PiecewiseBackend, holds: Callable[[int], bool], fallback: PiecewiseBackend
) -> None:
    """Make the swapped ``backend`` a :class:`SizeGuardedPiece`, its memo emptied."""
    backend.__class__ = SizeGuardedPiece
    backend.holds = holds  # type: ignore[attr-defined]
    backend.fallback = fallback  # type: ignore[attr-defined]
    backend._by_size = {
        t.lo: fn
        for t, fn in backend.runnables.items()
        if t.kind == "size" and holds(t.lo)
    }


__all__ = [
    "SizeGuardedPiece",
    "guard_piece",
    "refused_guard",
    "size_predicate",
    "size_symbol",
]
