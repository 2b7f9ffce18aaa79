"""What a tiered start's compile worker compiles, the same in a forked worker
and a spawned one (NOTE: [a tiered start], tier.py).

A *unit* is the pieces of one compile key (repeated pieces): the worker compiles its
first piece and the others share that compile.  Each piece comes with the
plan the backend call made (its targets and their compile keys), so the
worker compiles under exactly the keys the serving process will look up, and
is recorded in the entry's index once its artifacts are written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch.fx as fx

from ...config import CompilationConfig
from ...store.cache import CompileCache
from ...store.index import PieceRecord
from ..artifact_source import ArtifactSource, Piece
from ..compilers import CompilerAdapter
from ..inductor_warmup import on_cpu
from ..piece_plan import PiecePlan
from ..piecewise import example_inputs


@dataclasses.dataclass
class PieceJob:
    """One piece of a unit, as the backend call planned it."""

    name: str
    plan: PiecePlan
    module_path: str
    layouts: tuple[Any, ...]


@dataclasses.dataclass
class UnitJob:
    """The pieces of one compile key: the graph and fake inputs of the first,
    which is compiled; the others share its compile."""

    graph: fx.GraphModule
    args: tuple[Any, ...]
    pieces: list[PieceJob]


def piece_names(units: Sequence[UnitJob]) -> list[str]:
    """The pieces of ``units``, in order."""
    return [job.name for unit in units for job in unit.pieces]


class UnitCompiler:
    """In a worker: compile one piece of ``units`` by name into ``cache``, and
    record it there; its index record.  ``size`` is the backend call's runtime
    size (static targets compile from concrete inputs of it); ``note_guards``
    records the guards a compile added, before anything is saved under them."""

    def __init__(
        self,
        units: Sequence[UnitJob],
        config: CompilationConfig,
        cache: CompileCache,
        size: Any,
        note_guards: Callable[[], None],
        adapter: CompilerAdapter | None = None,
    ) -> None:
        self.by_name = {job.name: (unit, job) for unit in units for job in unit.pieces}
        self.config = config
        self.cache = cache
        self.size = size
        self.note_guards = note_guards
        self.adapter = adapter
        self.source: ArtifactSource | None = None

    def __call__(self, name: str) -> PieceRecord:
        unit, job = self.by_name[name]
        if self.source is None:
            # A fresh source: its memo holds only what this worker compiled.
            self.source = ArtifactSource(
                self.config,
                self.cache,
                adapter=self.adapter,
                note_guards=self.note_guards,
            )
            self.source.adapter.warm_up(cpu=on_cpu(unit.args))
        size = self.size
        piece = Piece(
            name,
            unit.graph,
            job.plan.size_index,
            lambda target: example_inputs(name, unit.args, target, size),
        )
        record, _ = self.source.record(piece, job.plan, job.module_path, job.layouts)
        self.note_guards()
        self.cache.record_piece(name, record)
        return record
