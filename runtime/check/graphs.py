"""CUDA graphs under the check: each replay compared with a direct call of the
compiled piece on the same inputs.

A graph replays the kernels it captured on the addresses it captured; an input
that moved since (a splitting op that allocates its output, a buffer the
stitching did not copy into) is read stale, and the replay returns numbers the
compiled piece never computes from the inputs it was given (vLLM #53915 and
#37363).  The manager here builds the piecewise tables of the served function
with every graph wrapped in a :class:`ReplayCheck`, which, while the recorder
runs the *replay* (NOTE: [three runs of one forward], recorder.py), calls the
compiled piece directly on copies of the same inputs and compares.  A size
captured as one full graph of the forward replays no piece on its own; its
graph is wrapped in a :class:`FullGraphReplay`, which tells the recorder so
(the report's notes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..cudagraph import CUDAGraphManager, CUDAGraphTables, CUDAGraphWrapper
from ..cudagraph.wrapper import FULL_GRAPH
from ..loader import DISPATCH_NAME
from .compare import copy_inputs
from .recorder import Recorder


class CheckGraphManager(CUDAGraphManager):
    """Stitch's CUDA graph manager, its piecewise graphs checked at each replay."""

    def __init__(self, settings: Any, recorder: Recorder, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.recorder = recorder

    def piecewise(
        self, plan: Any, **kwargs: Any
    ) -> tuple[Callable[..., Any], Callable[..., Any]]:
        piecewise, plain = super().piecewise(plan, **kwargs)
        tables = (piecewise.__kwdefaults__ or {}).get(DISPATCH_NAME)
        if isinstance(tables, CUDAGraphTables):
            piecewise.__kwdefaults__[DISPATCH_NAME] = CheckedTables(
                tables, self.recorder
            )
        return piecewise, plain

    def build(self, plan: Any, **kwargs: Any) -> Callable[..., Any]:
        served = super().build(plan, **kwargs)
        runners = getattr(served, "runners", None)
        for size, runner in (runners or {}).items():
            if isinstance(runner, CUDAGraphWrapper) and runner.piece == FULL_GRAPH:
                runners[size] = FullGraphReplay(runner, self.recorder)
        return served

    def bind(self, served: Any, graph: Any) -> None:
        """``graph`` (a CheckedGraph) is what ``served`` runs: its tables'
        pieces are that graph's (their keys, their skipped outputs)."""
        piecewise = getattr(getattr(served, "graphs", None), "tables", None)
        if isinstance(piecewise, CheckedTables):
            piecewise.graph = graph


class CheckedTables(CUDAGraphTables):
    """The piecewise tables, each graph wrapper behind a :class:`ReplayCheck`."""

    def __init__(self, tables: CUDAGraphTables, recorder: Recorder) -> None:
        super().__init__(
            tables.callables,
            tables.manager,
            tables.names,
            sorted(tables.capture_sizes),
            last=tables.last,
        )
        self.recorder = recorder
        self.graph: Any = None

    def __missing__(self, size: Any) -> list[Any]:
        table = super().__missing__(size)
        for i, entry in enumerate(table):
            if isinstance(entry, CUDAGraphWrapper):
                table[i] = ReplayCheck(entry, self, self.names[i])
        return table


class ReplayCheck:
    """One piece's graph at one size; in the replay run, each replay is
    compared with a direct call of the compiled piece on copies of its inputs.

    It holds the wrapper's slot in the table, so the wrapper never swaps
    itself for a bare replay closure (NOTE: [replay closures in the dispatch
    tables], cudagraph/wrapper.py): each call comes through here.
    """

    def __init__(self, wrapper: CUDAGraphWrapper, tables: CheckedTables, name: str):
        self.wrapper = wrapper
        self.tables = tables
        self.name = name

    def __call__(self, *args: Any) -> Any:
        tables = self.tables
        recorder = tables.recorder
        if recorder.mode != "replay" or tables.graph is None:
            return self.wrapper(*args)
        graph = tables.graph
        key = graph.key(self.name)
        recorder.enter(key, args)
        before = copy_inputs(args)
        replayed = self.wrapper(*args)
        if self.wrapper.graph is not None:
            direct = self.wrapper.runnable(*before)
            recorder.compare_replay(key, replayed, direct, graph.unset[self.name])
        return replayed


class FullGraphReplay:
    """The graph of the whole forward at one size; each call in the replay run
    is noted (the pieces run inside it, out of the check's sight).  Like
    :class:`ReplayCheck` it holds the wrapper's slot, so each call comes here."""

    def __init__(self, wrapper: CUDAGraphWrapper, recorder: Recorder) -> None:
        self.wrapper = wrapper
        self.recorder = recorder

    def __call__(self, *args: Any) -> Any:
        self.recorder.full_graph(self.wrapper.size)
        return self.wrapper(*args)


def replays(served: Sequence[Any]) -> bool:
    """Whether any of the served functions runs CUDA graphs."""
    return any(getattr(fn, "graphs", None) is not None for fn in served)
