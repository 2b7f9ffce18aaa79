"""One ``PiecewiseBackend`` per compiled piece: its runnables per shape target, and the dispatch between them."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from typing import Any

import torch

from stitch.core.errors import StitchRuntimeError

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


def concretize(value: Any, symbol: Any, size: int) -> Any:
    """A real value for ``value`` (fake tensor / SymInt) with ``symbol`` = ``size``.

    Raises :class:`ValueError` when another free symbol remains.
    """
    if isinstance(value, torch.SymInt):
        return _concrete_int(value, symbol, size)
    if isinstance(value, torch.Tensor):
        shape = [_concrete_int(s, symbol, size) for s in value.shape]
        stride = [_concrete_int(s, symbol, size) for s in value.stride()]
        return torch.empty_strided(
            shape, stride, dtype=value.dtype, device=value.device
        )
    return value


def _concrete_int(value: Any, symbol: Any, size: int) -> int:
    if isinstance(value, int):
        return value
    expr = value.node.expr.xreplace({symbol: size})
    if getattr(expr, "free_symbols", None):
        raise ValueError(f"{value} depends on symbols other than {symbol}")
    return int(expr)
