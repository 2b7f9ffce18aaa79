"""What the phases of one backend call hand on: the split, the emitted source,
and the call's result (``compilation.py``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch.fx as fx

from stitch.codegen.split import SplitItem

from ..cudagraph.graph_plan import GraphPlan
from ..store.dump import PieceReport
from .layouts import LayoutChecks
from .piecewise import PiecewiseBackend

if TYPE_CHECKING:
    from ..store.cache import CompileCache
    from ..store.index import PieceRecord
    from .tiered.tier import Tier


@dataclasses.dataclass
class CompiledModel:
    """What one backend call produced (kept for inspection and tests)."""

    split_gm: fx.GraphModule
    code: str
    submod_names: list[str]
    backends: dict[str, PiecewiseBackend]
    reports: list[PieceReport]
    cache_dir: str | None
    warm: bool
    seconds: float
    # What runs, the constants its source reads, the plan of its CUDA graphs
    # (None: none) and the guards its compile added (a saved forward's limits).
    fn: Callable[..., Any]
    consts: list[Any]
    graphs: GraphPlan | None
    guards: tuple[str, ...]
    # A cold start's cause: what differs from the nearest cached entry.
    why_cold: str | None = None
    # A tiered start's pieces still compiling (NOTE: [a tiered start]), else None.
    tier: Tier | None = None


@dataclasses.dataclass
class Split:
    """The split phase's result."""

    split_gm: fx.GraphModule
    items: list[SplitItem]
    layouts: LayoutChecks

    @property
    def compiled(self) -> list[SplitItem]:
        return [it for it in self.items if not it.is_splitting_graph]


@dataclasses.dataclass
class Emitted:
    """The emit phase's result: the serving source, saved with the entry's guards."""

    code: str
    submod_names: list[str]
    consts: list[Any]
    dispatch_on: str | None
    # The cache entry ``code`` was read from; None: emitted by this call.
    read_from: str | None
    source_file: str | None
    # The guards the entry holds under (recorded or added by this call).
    guards: tuple[str, ...]

    @property
    def from_cache(self) -> bool:
        return self.read_from is not None


@dataclasses.dataclass
class Built:
    """Every phase's result up to the tier's workers (``Compilation.stitched``)."""

    start: float
    graph_key: str
    cache: CompileCache | None
    split: Split
    records: dict[str, PieceRecord]
    reports: list[PieceReport]
    emitted: Emitted
    graphs: GraphPlan | None
    fn: Callable[..., Any]
    backends: dict[str, PiecewiseBackend]

    def result(
        self,
        warm: bool,
        seconds: float,
        cache_dir: str | None,
        why_cold: str | None,
        tier: Tier | None,
    ) -> CompiledModel:
        e = self.emitted
        return CompiledModel(
            self.split.split_gm,
            e.code,
            e.submod_names,
            self.backends,
            self.reports,
            cache_dir,
            warm,
            seconds,
            self.fn,
            e.consts,
            self.graphs,
            e.guards,
            why_cold,
            tier,
        )
