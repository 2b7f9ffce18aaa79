"""One ``PiecewiseBackend`` per compiled piece: its runnables per shape target, and the dispatch between them."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from stitch.core.errors import StitchRuntimeError

from ..compat.shapes import backed_values
from ..size import RuntimeSize
from ..targets import Target

log = logging.getLogger("stitch")

Runnable = Callable[..., Any]


class RangeWarnings:
    """One warning per compiled model (not per piece) for sizes outside all ranges."""

    def __init__(self) -> None:
        self.warned = False

    def outside(self, size: int, piece: str, ranges: list[tuple[int, int]]) -> None:
        if self.warned:
            return
        self.warned = True
        log.warning(
            "size %d is outside every compile range %s (first seen in piece %s); "
            "running the general runnables",
            size,
            ranges,
            piece,
        )


class PiecewiseBackend:
    """Runs one compiled piece, choosing the runnable by the runtime size.

    Exact static size first, then the compile range that contains the size, then
    the general runnable (with one warning when the size is outside every range).
    """

    def __init__(
        self,
        name: str,
        size_index: int | None,
        runnables: dict[Target, Runnable],
        module_path: str = "",
        range_warnings: RangeWarnings | None = None,
    ) -> None:
        if Target("general") not in runnables:
            raise StitchRuntimeError(f"piece {name} has no general runnable")
        self.name = name
        self.size_index = size_index
        self.module_path = module_path
        self.runnables = runnables
        self.general = runnables[Target("general")]
        self._by_size: dict[int, Runnable] = {
            t.lo: fn for t, fn in runnables.items() if t.kind == "size"
        }
        ranges = sorted(
            (t.lo, t.hi, fn) for t, fn in runnables.items() if t.kind == "range"
        )
        self._range_starts = [lo for lo, _, _ in ranges]
        self._ranges = ranges
        self._warnings = (
            range_warnings if range_warnings is not None else RangeWarnings()
        )

    def runnable_for(self, size: int) -> Runnable:
        fn = self._by_size.get(size)
        if fn is not None:
            return fn
        fn = self._lookup(size)
        # Memoize: later calls at this size are one dict hit.
        self._by_size[size] = fn
        return fn

    def _lookup(self, size: int) -> Runnable:
        if not self._ranges:
            return self.general
        i = bisect.bisect_right(self._range_starts, size) - 1
        if i >= 0:
            lo, hi, fn = self._ranges[i]
            if lo <= size <= hi:
                return fn
        self._warnings.outside(
            size, self.name, [(lo, hi) for lo, hi, _ in self._ranges]
        )
        return self.general

    def __call__(self, *args: Any) -> Any:
        if self.size_index is None:
            return self.general(*args)
        size = args[self.size_index]
        fn = self._by_size.get(size)
        if fn is None:
            fn = self.runnable_for(int(size))
        return fn(*args)


# NOTE: [sizes that move with the token count]
# A static target (compile_sizes) compiles a piece for one value of the
# runtime size symbol.  A graph can carry the same size under several symbols:
# vLLM marks ``input_ids`` and ``positions`` dynamic one by one, with duck
# sizing off, so the token count is ``s72`` in one and ``s80`` in the other.
# Every symbol whose value in the example inputs equals the size's is taken to
# be that size and specialized with it, as vLLM's own ``create_concrete_args``
# does for every symbol; with duck sizing on (torch.compile's default), Dynamo
# already gives equal sizes one symbol and guards that they stay equal.  A
# symbol whose example value differs is another size (a transformers model
# with batch and sequence length both dynamic): no static compile can fix it,
# so the plan leaves the piece's static targets out (piece_plan.py, with one warning
# per graph) and the piece runs its general runnable at those sizes.


def other_sizes(args: Sequence[Any], symbol: Any) -> list[str]:
    """The sizes in ``args`` that a static target for ``symbol`` cannot fix, as
    ``"s50=8"`` (each symbol with its example value), sorted."""
    found: dict[str, str] = {}
    hints: dict[Any, Any] | None = None  # one shape env: read once
    for value in args:
        dims: list[Any] = []
        if isinstance(value, torch.SymInt):
            dims = [value]
        elif isinstance(value, torch.Tensor):
            dims = [*value.shape, *value.stride()]
        for dim in dims:
            if isinstance(dim, torch.SymInt):
                if hints is None:
                    hints = backed_values(dim.node.shape_env)
                for s in _untied(dim.node.expr, symbol, hints):
                    found[str(s)] = f"{s}={hints.get(s, '?')}"
    return [found[name] for name in sorted(found)]


def example_inputs(
    name: str, args: tuple[Any, ...], target: Target, size: RuntimeSize | None
) -> list[Any]:
    """The inputs piece ``name`` compiles with for ``target``: ``args`` (fake) for a
    dynamic target, real tensors of the target's size for a static one."""
    if not target.static:
        return list(args)
    if size is None:
        raise StitchRuntimeError(f"piece {name}: {target.describe()} needs a size")
    others = other_sizes(args, size.symbol)
    if others:
        raise StitchRuntimeError(
            f"piece {name}: cannot specialize to {target.describe()}: its inputs "
            f"depend on {', '.join(others)}, sizes other than {size.symbol} that "
            "the target does not fix"
        )
    return [concretize(a, target.lo) for a in args]


def concretize(value: Any, size: int) -> Any:
    """A real value for ``value`` (fake tensor / SymInt) with every free symbol =
    ``size``: the runtime size's and those tied to it, the only ones left once
    :func:`other_sizes` found none other (NOTE: [sizes that move with the token
    count])."""
    if isinstance(value, torch.SymInt):
        return _concrete_int(value, size)
    if isinstance(value, torch.Tensor):
        shape = [_concrete_int(s, size) for s in value.shape]
        stride = [_concrete_int(s, size) for s in value.stride()]
        return torch.empty_strided(
            shape, stride, dtype=value.dtype, device=value.device
        )
    return value


def _concrete_int(value: Any, size: int) -> int:
    if isinstance(value, int):
        return value
    expr = value.node.expr
    free = getattr(expr, "free_symbols", None) or ()
    return int(expr.xreplace({s: size for s in free}))


def _untied(expr: Any, symbol: Any, hints: dict[Any, Any]) -> list[Any]:
    """The free symbols of ``expr`` that are neither ``symbol`` nor equal to it in
    the example inputs."""
    want = hints.get(symbol)
    return [
        s
        for s in getattr(expr, "free_symbols", None) or ()
        if s != symbol and (want is None or hints.get(s) != want)
    ]
