"""The phases after the pieces compile: the compiled pieces assembled into one
function.

Emit the stitching source (and complete the cache entry), plan the CUDA
graphs, and load the function from one :class:`CompiledPlan`
(``materialize.py``).  ``Compilation.stitched`` runs them in that order; each
reads of the call only what :class:`BackendCall` declares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch.fx as fx

from ..compat.trace import phase
from ..config import CompilationConfig
from ..cudagraph import CUDAGraphManager
from ..cudagraph.graph_plan import GraphPlan
from ..profiling import Profiler
from ..size import RuntimeSize, hoisted_input
from ..store.cache import CompileCache
from ..store.dump import PieceReport, debug_dump
from ..store.index import PieceRecord
from .artifact_source import ArtifactSource
from .entry import EntryGuards
from .materialize import CompiledPlan, materialize, served_source
from .piecewise import PiecewiseBackend, RangeWarnings
from .results import Emitted, Split
from .stitching_source import stitching_source
from .tracing import trace_source, trace_split


class BackendCall(Protocol):
    """What the phases here read of the backend call they finish
    (``Compilation`` has every one of these)."""

    config: CompilationConfig
    gm: fx.GraphModule
    # The call's fake inputs and the runtime size the pieces dispatch on.
    fakes: list[Any]
    size: RuntimeSize | None
    entry_guards: EntryGuards
    source: ArtifactSource
    cudagraphs: CUDAGraphManager | None
    profiler: Profiler | None
    range_warnings: RangeWarnings


def emit(
    call: BackendCall,
    split: Split,
    cache: CompileCache | None,
    records: dict[str, PieceRecord],
    reports: list[PieceReport],
) -> Emitted:
    size_indices = {name: r.size_index for name, r in records.items()}
    # The placeholder the pieces' runnables are picked by, once per forward.
    dispatch_on = hoisted_input(split.split_gm, call.size, size_indices)
    with phase("stitch_emit"):
        code, names, consts, read_from = stitching_source(
            split.split_gm, cache, dispatch_on
        )
    # The entry is complete: its guards, then its source.
    guards = call.entry_guards.finish(cache)
    if cache is not None:
        cache.save_source(code, names, dispatch_on)
    # NOTE: [emitted source lives in a real file] (loader.py): the cache's,
    # else the debug dump's, else a private one the loader writes.
    source_file = debug_dump(
        call.config.debug_dump_path,
        split.split_gm,
        code,
        reports,
        cache.source_path() if cache is not None else None,
    )
    trace_source(code)
    trace_split(reports, call.source.deferred)
    return Emitted(code, names, consts, dispatch_on, read_from, source_file, guards)


def plan_graphs(
    call: BackendCall,
    split: Split,
    records: dict[str, PieceRecord],
    emitted: Emitted,
) -> GraphPlan | None:
    fake_inputs = call.fakes
    if call.cudagraphs is None or not call.cudagraphs.applies_to(fake_inputs):
        return None
    return call.cudagraphs.plan(
        graph=call.gm,
        split_gm=split.split_gm,
        example_inputs=fake_inputs,
        backends=records,
        submod_names=emitted.submod_names,
        size=call.size if emitted.dispatch_on is not None else None,
        compile_sizes=call.config.compile_sizes,
    )


def load_function(
    call: BackendCall,
    split: Split,
    emitted: Emitted,
    records: dict[str, PieceRecord],
    reports: list[PieceReport],
    graphs: GraphPlan | None,
) -> tuple[Callable[..., Any], dict[str, PiecewiseBackend]]:
    """The function and each piece's backend; ``Compilation.install_pieces``
    installs the backends."""
    code, consts, filename, ranges, entry = served_source(
        emitted, call.profiler, split.split_gm, reports, call.config
    )
    # NOTE: [one plan for cold, warm and saved starts] (materialize.py):
    # here each key's runnable is the one this call compiled or loaded.
    plan = CompiledPlan(
        code, filename, tuple(emitted.submod_names), records, consts, graphs, entry
    )
    with phase("stitch_load"):
        fn, backends = materialize(
            plan,
            call.config,
            call.source.runnable,
            cudagraphs=call.cudagraphs if graphs is not None else None,
            warnings=call.range_warnings,
            ranges=ranges,
        )
    return fn, backends
