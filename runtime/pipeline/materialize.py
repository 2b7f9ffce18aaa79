"""One compiled plan, and :func:`materialize`: how every start brings it to life.

NOTE: [one plan for cold, warm and saved starts]
Once its pieces exist, a compiled graph is a :class:`CompiledPlan`: the
emitted stitching source and the file holding it, the pieces the source calls,
each piece's record (its size argument, module path, eager-fed layouts and one
compile key per shape target: the cache index's :class:`PieceRecord`), the
constants the source reads and the plan of its CUDA graphs.  Every part is
serializable, and saved: the records and the source are the cache entry's
index and source file, the constants and the graph plan are what a saved
function's reference holds (``saved_function.py``).  The cold compile makes the plan
while it compiles, the warm start while it loads, the saved forward reads it
back from the entry and the reference; all three turn it into the function
that runs with :func:`materialize`, and differ only in where the runnable of a
compile key comes from (the compile that just ran, or the cache, verified by
``CompileCache.lookup``, the one identity check).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from stitch.core import StitchCacheError

from ..config import CompilationConfig
from ..cudagraph import CUDAGraphManager
from ..cudagraph.graph_plan import GraphPlan
from ..edited_source import edited_step, read_edited_source
from ..loader import compile_execution_fn
from ..profiling import PieceRanges, Profiler, piece_list
from ..store.index import SOURCE_FILE, EntryRecord, PieceRecord
from ..targets import Target, targets_by_key
from .layouts import guard_layouts
from .piecewise import PiecewiseBackend, RangeWarnings
from .warm_load import warm_step


class Emitted(Protocol):
    """What :func:`served_source` reads of the emit phase's result
    (``results.Emitted``, which imports this module through the tier)."""

    code: str
    consts: Sequence[Any]
    source_file: str | None
    read_from: str | None
    dispatch_on: str | None


# The runnable of one entry of a piece: (piece name, target, entry) -> runnable.
Runnables = Callable[[str, Target, EntryRecord], Any]


@dataclasses.dataclass(frozen=True)
class CompiledPlan:
    """What a compiled graph runs, without the runnables themselves."""

    code: str
    # The file holding ``code`` (tracebacks and debuggers read it), if any.
    filename: str | None
    # The compiled pieces the source calls through ``__vllm_submods__``, in order.
    submod_names: tuple[str, ...]
    pieces: Mapping[str, PieceRecord]
    consts: Sequence[Any]
    # None: no CUDA graphs.
    graphs: GraphPlan | None = None
    # The cache entry whose warm load read ``code``; None: emitted by this process.
    read_from: str | None = None


def materialize(
    plan: CompiledPlan,
    config: CompilationConfig,
    runnable: Runnables,
    *,
    cudagraphs: CUDAGraphManager | None = None,
    warnings: RangeWarnings | None = None,
    ranges: Any = None,
) -> tuple[Callable[..., Any], dict[str, PiecewiseBackend]]:
    """The function ``plan`` describes, and each piece's backend.

    ``config`` gives the shape targets a record's entries name; ``cudagraphs``
    builds the plan's graphs (None, or a plan without graphs: none);
    ``ranges`` (the profiling variant's) go to the binding.
    """
    warnings = warnings if warnings is not None else RangeWarnings()
    backends = {
        name: piece_backend(name, record, config, runnable, warnings)
        for name, record in plan.pieces.items()
    }
    names = list(plan.submod_names)
    code, filename, bound = plan.code, plan.filename, dict(backends)
    edited, timed = None, None
    if config.compile.stitching_source:
        # NOTE: [an edited stitching file runs in place of the emitted one]
        edited = read_edited_source(
            config.compile.stitching_source, code, plan.submod_names, len(plan.consts)
        )
        code, filename = edited.code, edited.path
        if ranges is not None:  # NOTE: [a profile of an edited stitching file]
            timed, ranges = ranges, None
            bound = _timed_pieces(backends, plan, timed)
    # NOTE: [running cached source is a step of its warm load]
    # Source read from an entry reads back whole and hashes as recorded, yet
    # its top level may still fail to run in this process (a name it lacks, a
    # loader check).  That is the warm load's source step failing: every
    # error, Stitch's own included, makes the call compile without the cache
    # (NOTE: [a warm load that fails compiles instead], warm_load.py).
    running: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if edited is not None:
        running = edited_step(edited)  # the user's error, not the cache's
    elif plan.read_from is not None:
        running = warm_step(plan.read_from, "source", SOURCE_FILE, keep=())
    with running:
        if cudagraphs is not None and plan.graphs is not None:
            fn = cudagraphs.build(
                plan.graphs,
                code=code,
                backends=bound,
                submod_names=names,
                consts=plan.consts,
                filename=filename,
                ranges=ranges,
            )
        else:
            fn = compile_execution_fn(
                code, bound, names, plan.consts, filename=filename, ranges=ranges
            )
    if timed is not None:
        fn = _timed_forward(fn, timed)
    return fn, backends


def served_source(
    emitted: Emitted,
    profiler: Profiler | None,
    split_gm: Any,
    reports: Sequence[Any],
    config: CompilationConfig,
) -> tuple[str, Sequence[Any], str | None, PieceRanges | None, str | None]:
    """What a backend call runs: the serving source, or its profiling variant
    (never cached); its constants, its file, its ranges and the entry it was
    read from.

    NOTE: [a profile of an edited stitching file]
    An edited stitching file (``stitching_source``) has no ranges of its own,
    and the profiling variant is generated from the split graph, not from the
    file: profiled, the edit runs as it is, each compiled piece timed around
    its call (``_timed_pieces``), so its splitting ops count as stitching.  It is
    checked against the serving source, as when it serves.
    """
    if profiler is None:
        return (
            emitted.code,
            emitted.consts,
            emitted.source_file,
            None,
            emitted.read_from,
        )
    pieces = piece_list(reports)
    if config.compile.stitching_source:
        compiled = [p for p in pieces if not p[1]]
        return emitted.code, emitted.consts, None, profiler.ranges(compiled), None
    code, consts, ranges = profiler.variant(split_gm, emitted.dispatch_on, pieces)
    return code, consts, None, ranges, None


def _timed_pieces(
    backends: Mapping[str, Any], plan: CompiledPlan, ranges: PieceRanges
) -> dict[str, Any]:
    """Each piece's call timed by ``ranges`` (NOTE: [a profile of an edited
    stitching file])."""

    def piece(name: str, backend: Any) -> Callable[..., Any]:
        path = plan.pieces[name].module_path

        def call(*args: Any) -> Any:
            ranges.begin(name, path)
            try:
                return backend(*args)
            finally:
                ranges.end()

        return call

    return {name: piece(name, b) for name, b in backends.items()}


def _timed_forward(fn: Callable[..., Any], ranges: PieceRanges) -> Callable[..., Any]:
    """``fn``, each call timed by ``ranges`` as one forward."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        ranges.begin_forward()
        try:
            return fn(*args, **kwargs)
        finally:
            ranges.end_forward()

    return forward


def piece_backend(
    name: str,
    record: PieceRecord,
    config: CompilationConfig,
    runnable: Runnables,
    warnings: RangeWarnings,
) -> PiecewiseBackend:
    possible = targets_by_key(config.compile, record.size_index is not None)
    runnables = {}
    for entry in record.entries:
        target = possible.get(entry.target)
        if target is None:
            raise StitchCacheError(
                f"piece {name}: target {entry.target!r} is not one of this config's"
            )
        # NOTE: [piece inputs restrided to their compiled layout] (layouts.py)
        runnables[target] = guard_layouts(runnable(name, target, entry), record.layouts)
    return PiecewiseBackend(
        name, record.size_index, runnables, record.module_path, warnings
    )
