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
from typing import Any

from stitch.core import StitchCacheError

from ..config import CompilationConfig
from ..cudagraph import CUDAGraphManager
from ..cudagraph.graph_plan import GraphPlan
from ..loader import compile_execution_fn
from ..store.index import SOURCE_FILE, EntryRecord, PieceRecord
from ..targets import Target, targets_by_key
from .layouts import guard_layouts
from .piecewise import PiecewiseBackend, RangeWarnings
from .warm_load import warm_step

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
    # NOTE: [running cached source is a step of its warm load]
    # Source read from an entry reads back whole and hashes as recorded, yet
    # its top level may still fail to run in this process (a name it lacks, a
    # loader check).  That is the warm load's source step failing: every
    # error, Stitch's own included, makes the call compile without the cache
    # (NOTE: [a warm load that fails compiles instead], warm_load.py).
    running: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if plan.read_from is not None:
        running = warm_step(plan.read_from, "source", SOURCE_FILE, keep=())
    with running:
        if cudagraphs is not None and plan.graphs is not None:
            fn = cudagraphs.build(
                plan.graphs,
                code=plan.code,
                backends=backends,
                submod_names=names,
                consts=plan.consts,
                filename=plan.filename,
                ranges=ranges,
            )
        else:
            fn = compile_execution_fn(
                plan.code,
                backends,
                names,
                plan.consts,
                filename=plan.filename,
                ranges=ranges,
            )
    return fn, backends


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
