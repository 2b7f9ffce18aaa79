"""``Compilation``: one backend call, as named phases that hand data to the next.

The phases, in order: make the fake inputs, open the cache entry, split,
compile (or load) each piece, emit the stitching source, plan the CUDA graphs,
and materialize the function (``materialize.py``); the last three, which
assemble the function from the pieces, are in ``assembly.py``.  Each phase
returns what the next one reads; the call's result is one
:class:`CompiledModel`.  The timed phases and the split show in
``TORCH_TRACE`` (``tracing.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch.fx as fx

from stitch.codegen import module_path_of
from stitch.codegen.fingerprint import structures_described_once

from ..compat.fake import shape_env_of
from ..compat.trace import phase
from ..config import CompilationConfig
from ..counter import compilation_counter
from ..cudagraph import CUDAGraphManager
from ..profiling import Profiler
from ..progress import progress_bar
from ..size import find_size
from ..store.cache import CompileCache
from ..store.digests import graph_key as entry_graph_key
from ..store.dump import PieceReport
from ..store.index import PieceRecord
from ..workers.giving_way import give_way
from ..workers.spawned_pool import SpawnedPool
from .artifact_source import Piece, config_adapter, key_salt
from .assembly import emit, load_function, plan_graphs
from .entry import EntryGuards
from .fake_propagation import PieceArgs
from .fakes import backend_fake_inputs
from .fleet import FleetCacheSession
from .layouts import LayoutChecks, fed_layouts
from .piece_plan import PiecePlan, UnfixedSizes, piece_state, recalled_or_planned
from .piecewise import PiecewiseBackend, RangeWarnings, example_inputs
from .results import Built, CompiledModel, Split
from .split_policy import SplitPolicy
from .tiered.deferred import prepare_compiles, tiered_decision
from .tiered.pool_choice import pool_for
from .tracing import summary
from .warm_load import WarmLoadFailed, report

log = logging.getLogger("stitch")


class Compilation:
    """One backend call: split, plan and compile (or load) each piece, stitch."""

    def __init__(
        self,
        config: CompilationConfig,
        gm: fx.GraphModule,
        example_inputs: Sequence[Any],
        policy: SplitPolicy,
        *,
        cudagraphs: CUDAGraphManager | None = None,
        profiler: Profiler | None = None,
        cache_group: str = "",
        spawned_pool: SpawnedPool | None = None,
    ) -> None:
        self.config = config
        self.gm = gm
        self.example_inputs = list(example_inputs)
        self.policy = policy
        self.cudagraphs = cudagraphs
        self.profiler = profiler
        self.cache_group = cache_group
        self.config_hash = config.compute_hash()
        self.adapter = config_adapter(config)
        self.key_salt = key_salt(self.adapter) + self.config_hash
        self.range_warnings = RangeWarnings()
        self.unfixed = UnfixedSizes()
        self.entry_guards = EntryGuards(None)
        self.fleet = FleetCacheSession(config)
        # Each compiled piece's plan (a tiered start's workers compile from it).
        self.plans: dict[str, PiecePlan] = {}
        # A tiered start's spawned workers, kept by the backend
        # (NOTE: [pre-started compile workers]); a pool of the call's own else.
        self.spawned_pool = spawned_pool or pool_for(config)
        self.worker_start = "fork"
        self.fakes: list[Any] = []
        # Why the call compiled after a warm load failed (warm_load.py).
        self.why_cold: str | None = None

    def run(self) -> CompiledModel:
        return self.finish(self.built(*self.open()))

    def open(self) -> tuple[float, str, CompileCache | None]:
        """The phases before the split: the fake inputs, then the cache entry."""
        start = time.perf_counter()
        # Counted once the fake inputs stand: specializing a lifted float asks
        # Dynamo to trace again (lifted_floats.py), and that call compiled nothing.
        fake_inputs = self.fake_inputs()
        compilation_counter.num_graphs_seen += 1
        compilation_counter.num_backend_compilations += 1
        graph_key, cache = self.open_cache(fake_inputs)
        return start, graph_key, cache

    def built(self, start: float, graph_key: str, cache: CompileCache | None) -> Built:
        """The phases up to the tier's workers (NOTE: [Dynamo's graph serves while
        the stitching is built] runs them apart)."""
        try:
            return self.stitched(start, graph_key, cache)
        except WarmLoadFailed as failed:
            # NOTE: [a warm load that fails compiles instead] (warm_load.py)
            self.why_cold = report(failed, "this call compiles without the cache")
            self.without_cache()
            return self.stitched(start, graph_key, None)

    def stitched(self, start: float, key: str, cache: CompileCache | None) -> Built:
        try:
            self.source.begin_build()
            split = self.split()
            # NOTE: [a graph's structure is described once per compile]
            with structures_described_once():
                records, reports = self.compile_pieces(split, self.fakes, cache)
            # The finishing phases (assembly.py).
            emitted = emit(self, split, cache, records, reports)
            give_way()
            graphs = plan_graphs(self, split, records, emitted)
            fn, backends = load_function(self, split, emitted, records, reports, graphs)
            self.install_pieces(split, backends)
            # NOTE: [an edited stitching file runs in place of the emitted one]
            if cache is not None:
                cache.note_edited(self.config.compile.stitching_source)
        except BaseException:
            self.fleet.end(False)
            raise
        stages = (split, records, reports, emitted, graphs, fn, backends)
        return Built(start, key, cache, *stages)

    def finish(self, built: Built) -> CompiledModel:
        b, cache, finished, tier = built, built.cache, False, None
        try:
            if self.source.deferred and cache is not None:
                from .tiered.compile_workers import start_tier

                parts = (b.fn, b.backends, cache, b.start, b.graph_key)
                tier = start_tier(self, b.split.compiled, b.split.layouts, *parts)
            if tier is None:
                self.fleet.record(cache)
            finished = True
        finally:
            if tier is None:
                self.fleet.end(finished)
        warm, seconds, cache_dir = summary(b)
        why_cold = None if warm else self.why_cold or self.fleet.why_cold
        return b.result(warm, seconds, cache_dir, why_cold, tier)

    def without_cache(self) -> None:
        """Start again as a cold call that neither reads nor writes the cache."""
        self.entry_guards.forget()
        self.range_warnings = RangeWarnings()
        self.unfixed = UnfixedSizes()
        self.plans = {}
        self.tiered_off = "a warm load failed"
        self.artifact_source(None)

    def artifact_source(self, cache: CompileCache | None) -> None:
        """The call's artifact source (a cold tiered call that spawns its
        workers has its pool start them now: NOTE: [pre-started compile
        workers])."""
        self.source = prepare_compiles(
            self.config,
            self.example_inputs,
            self.adapter,
            self.tiered_off,
            self.worker_start,
            cache,
            lambda: self.entry_guards.note(cache),
            self.spawned_pool,
        )

    # -- the phases ----------------------------------------------------------
    def fake_inputs(self) -> list[Any]:
        # NOTE: [pieces trace in the backend's fake mode] (fakes.py); Inductor
        # calls wait for its warm-up (compilers.py), prebuilt loads never do.
        fake_inputs = backend_fake_inputs(self.gm, self.example_inputs)
        self.adapter.prepare(self.gm, fake_inputs)
        # split_policy.py: the rewrite comes before the key, which then covers it.
        self.policy.prepare(self.gm)
        self.size = find_size(self.gm, fake_inputs)
        self.fakes = fake_inputs
        return fake_inputs

    def open_cache(self, fake_inputs: list[Any]) -> tuple[str, CompileCache | None]:
        graph_key = entry_graph_key(self.gm, fake_inputs)
        # NOTE: [the guards a backend call adds are part of its cache entry]
        # (compat/shapes.py): the key is taken before anything here can add any.
        self.entry_guards = EntryGuards(shape_env_of(fake_inputs))
        cache = None
        if not self.config.disable_cache:

            def reopen() -> CompileCache | None:
                return self.entry_guards.open(
                    self.config, graph_key, self.config_hash, self.cache_group
                )

            cache = reopen()
        # NOTE: [a tiered start] (tiered/tier.py): missing pieces compile in workers
        # (their start decided, and warned about, once); a replica that waits
        # for another's lease serves meanwhile.
        self.worker_start, self.tiered_off = tiered_decision(
            self.config, self.example_inputs, cache, self.spawned_pool
        )
        if cache is not None:
            cache = self.fleet.open(cache, reopen, self.tiered_off is None)
            self.fleet.explain(cache, self.gm, fake_inputs, self.cache_group, graph_key)
        self.artifact_source(cache)
        self.why_cold = next(iter(self.entry_guards.failed), None)
        return graph_key, cache

    def split(self) -> Split:
        with phase("stitch_split"):
            split_gm, items = self.policy.split(self.gm)
            # NOTE: [piece inputs restrided to their compiled layout] (layouts.py)
            layouts = fed_layouts(
                split_gm, {it.submod_name for it in items if it.is_splitting_graph}
            )
        compilation_counter.num_piecewise_graphs_seen += len(items)
        split = Split(split_gm, items, layouts)
        compilation_counter.num_piecewise_capturable_graphs_seen += len(split.compiled)
        return split

    def compile_pieces(
        self, split: Split, fake_inputs: list[Any], cache: CompileCache | None
    ) -> tuple[dict[str, PieceRecord], list[PieceReport]]:
        if cache is not None:
            cache.identify({it.submod_name: it.graph for it in split.compiled})
        # NOTE: [warm start skips fake propagation]: a fake run only for a miss.
        args = self.piece_args = PieceArgs(split.split_gm, fake_inputs)
        records: dict[str, PieceRecord] = {}
        reports: list[PieceReport] = []
        progress = progress_bar(
            len(split.compiled),
            "stitch: compiling pieces",
            "piece",
            enabled=len(split.compiled) >= 8 and log.isEnabledFor(logging.INFO),
        )
        with phase("stitch_compile", pieces=len(split.compiled)):
            for item in split.items:
                path = module_path_of(item.graph)
                if item.is_splitting_graph:
                    reports.append(
                        PieceReport(item.submod_name, True, path, [], 0.0, "-")
                    )
                    continue
                record, report = self.compile_piece(
                    item.submod_name, item.graph, args, path, split.layouts, cache
                )
                records[item.submod_name] = record
                reports.append(report)
                progress.update(1)
                give_way()
            progress.close()
        deferred = self.source.deferred
        if deferred:
            # The workers compile from these fake inputs; made now, before the
            # pieces' backends are installed (NOTE: [pieces are installed after
            # the loop]).
            args(next(iter(deferred)))
        self.unfixed.report(self.config.compile_sizes)
        return records, reports

    def install_pieces(
        self, split: Split, backends: dict[str, PiecewiseBackend]
    ) -> None:
        # NOTE: [pieces are installed after the loop]
        # A miss after a hit runs the fake propagation over split_gm, which must
        # call the pieces' own GraphModules, not a PiecewiseBackend; the split
        # graph (CompiledModel.split_gm) runs the compiled pieces from here on.
        for piece_name, backend in backends.items():
            split.split_gm.__dict__[piece_name] = backend

    # -- one piece -----------------------------------------------------------
    def compile_piece(
        self,
        name: str,
        graph: fx.GraphModule,
        args: PieceArgs,
        module_path: str,
        layouts: LayoutChecks,
        cache: CompileCache | None,
    ) -> tuple[PieceRecord, PieceReport]:
        """The piece's record (its runnables are in the artifact source) and report."""
        plan = self.plans[name] = recalled_or_planned(
            name,
            graph,
            args,
            cache,
            self.size,
            self.config,
            self.key_salt,
            self.unfixed,
        )
        piece = Piece(
            name,
            graph,
            plan.size_index,
            lambda target: example_inputs(name, args(name), target, self.size),
        )
        piece_start = time.perf_counter()
        record, outcomes = self.source.record(
            piece, plan, module_path, layouts.get(name, ())
        )
        seconds = time.perf_counter() - piece_start
        if cache is not None:
            self.entry_guards.note(cache)
            if name not in self.source.deferred:
                cache.record_piece(name, record)
        targets = [t.describe() for t in plan.targets]
        report = PieceReport(
            name, False, module_path, targets, seconds, piece_state(outcomes)
        )
        return record, report
