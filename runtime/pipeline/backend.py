"""``StitchBackend``: the torch.compile backend (split, compile pieces, stitch)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch.fx as fx

from stitch.codegen import graph_hash, module_path_of, split_graph
from stitch.codegen.fingerprint import describe_example
from stitch.codegen.matching import OpMatcher
from stitch.core import StitchCacheError, StitchRuntimeError

from ..compat.fake import shape_env_of
from ..compat.versions import check_supported
from ..config import CompilationConfig
from ..counter import compilation_counter
from ..cudagraph import CUDAGraphManager
from ..cudagraph.plan import GraphPlan
from ..profiling import Profiler, piece_list
from ..progress import progress_bar
from ..size import find_size, hoisted_input
from ..store.artifacts import ARTIFACT_FILE
from ..store.cache import CompileCache
from ..store.dump import SOURCE_FILE as DUMP_SOURCE_FILE
from ..store.dump import PieceReport, trace_source, write_debug_dump
from ..store.index import EntryRecord, PieceRecord
from ..targets import Target
from .compilers import CompilerAdapter, make_adapter, on_cpu, start_inductor_warmup
from .entry import EntryGuards
from .fakes import backend_fake_inputs
from .graph_inputs import GraphInput, graph_inputs
from .layouts import LayoutChecks, eager_fed_layouts
from .materialize import CompiledPlan, materialize
from .piecewise import PiecewiseBackend, RangeWarnings, example_inputs
from .plan import (
    KeyChoice,
    PiecePlan,
    StringKeys,
    UnfixedSizes,
    piece_inputs,
    plan_piece,
)
from .scalars import specialize_lifted_floats
from .sdpa_inputs import rewrite_splitting_sdpa
from .source import stitching_source
from .splitting import SplittingOpWarnings
from .stitched import in_torch_aot_compile, saveable

log = logging.getLogger("stitch")

DUMP_ENV = "STITCH_DEBUG_DUMP"


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


class StitchBackend:
    """A torch.compile backend: ``torch.compile(model, backend=StitchBackend(cfg))``.

    Each call splits Dynamo's graph at the splitting ops, compiles every other
    piece (once per unique piece and shape target), and returns the emitted
    stitching function bound to the compiled pieces.
    """

    def __init__(
        self,
        config: CompilationConfig | None = None,
        *,
        serializable: bool | None = None,
        profiler: Profiler | None = None,
        splitting_warnings: SplittingOpWarnings | None = None,
        cache_group: str = "",
        **fields: Any,
    ) -> None:
        if config is not None and fields:
            raise StitchRuntimeError("pass a CompilationConfig or fields, not both")
        self.config = config if config is not None else CompilationConfig(**fields)
        check_supported()  # one warning outside the tested torch releases
        # Return a StitchFunction (saveable by torch's aot_compile): always (True),
        # never (False), or when torch.compile(...).aot_compile calls (None).
        self.serializable = serializable
        self.compiled: list[CompiledModel] = []
        # Pool, capture switch and start-up capture of every graph compiled here.
        self.cudagraphs = CUDAGraphManager(self.config)
        # Splitting ops that matched nothing, reported once per backend.
        self.splitting_warnings = splitting_warnings or SplittingOpWarnings()
        # What the ranks of one engine share (NOTE: [ranks of one engine share a
        # folder] in store/location.py); "": each graph's own folder.
        self.cache_group = cache_group
        # Set: every graph runs the profiling variant of its source (profiling.py).
        self.profiler = profiler
        # The inputs of the last graph (sizes, written or not): what a saved
        # forward's input check is made from (see input_check.py).
        self.graph_inputs: list[GraphInput] = []

    def __call__(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any]
    ) -> Callable[..., Any]:
        self.graph_inputs = graph_inputs(gm, example_inputs)
        compilation = Compilation(
            self.config,
            gm,
            example_inputs,
            self.cudagraphs,
            self.splitting_warnings,
            self.profiler,
            self.cache_group,
        )
        fn = compilation.run(self.compiled)
        if self.serializable or (self.serializable is None and in_torch_aot_compile()):
            return saveable(
                fn,
                self.config,
                self.compiled[-1].cache_dir,
                compilation.consts,
                compilation.graphs,
                compilation.guards,
            )
        return fn


def stitch_backend(
    gm: fx.GraphModule, example_inputs: Sequence[Any]
) -> Callable[..., Any]:
    """The ``backend="stitch"`` entry point: a default :class:`CompilationConfig`."""
    return StitchBackend()(gm, example_inputs)


class Compilation:
    """One backend call: split, plan and compile (or load) each piece, stitch."""

    def __init__(
        self,
        config: CompilationConfig,
        gm: fx.GraphModule,
        example_inputs: Sequence[Any],
        cudagraphs: CUDAGraphManager | None = None,
        splitting_warnings: SplittingOpWarnings | None = None,
        profiler: Profiler | None = None,
        cache_group: str = "",
    ) -> None:
        self.config = config
        self.profiler = profiler
        self.cache_group = cache_group
        self.cudagraphs = cudagraphs
        self.splitting_warnings = splitting_warnings or SplittingOpWarnings()
        self.gm = gm
        self.example_inputs = list(example_inputs)
        self.adapter: CompilerAdapter = make_adapter(
            config.backend, config.inductor_compile_config, config.inductor_passes
        )
        self.config_hash = config.compute_hash()
        self.key_salt = self.adapter.name + self.config_hash
        # compile key -> runnable, shared by twins within this call
        self.memo: dict[str, Any] = {}
        self.range_warnings = RangeWarnings()
        self.unfixed = UnfixedSizes()
        self.layout_checks: LayoutChecks = {}
        # normalized key -> whether the compiled code is free of the piece's strings
        self.string_free: dict[str, bool] = {}
        self.loaded: dict[str, Any] = {}
        # What the emitted source reads, whether it runs CUDA graphs and their
        # plan (None: no graphs after all), set by run.
        self.consts: list[Any] = []
        self.cudagraphed = False
        self.graphs: GraphPlan | None = None
        # The guards this call's entry holds under (installed or added here).
        self.entry_guards = EntryGuards(None)
        self.guards: tuple[str, ...] = ()

    # -- the steps -----------------------------------------------------------
    def run(self, sink: list[CompiledModel]) -> Callable[..., Any]:
        start = time.perf_counter()
        # Inductor calls wait for its warm-up (compilers.py); prebuilt loads never do.
        fake_inputs = self._fake_inputs()
        # NOTE: [lifted floats are specialized up front] (scalars.py), for
        # Inductor's tensorify pass; eager pieces run lifted floats as they are.
        if self.adapter.name == "inductor":
            specialize_lifted_floats(fake_inputs)
        compilation_counter.num_graphs_seen += 1
        compilation_counter.num_backend_compilations += 1
        matcher = OpMatcher.parse(self.config.splitting_ops)
        # sdpa_inputs.py: before the key, which then covers the rewrite.
        rewrite_splitting_sdpa(self.gm, matcher)
        self.size = find_size(self.gm, fake_inputs)
        graph_key = self._graph_key(fake_inputs)
        # NOTE: [the guards a backend call adds are part of its cache entry]
        # (compat/shapes.py): the key is taken before anything here can add any.
        self.entry_guards = EntryGuards(shape_env_of(fake_inputs))
        cache = None
        if not self.config.disable_cache:
            cache = self.entry_guards.open(
                self.config, graph_key, self.config_hash, self.cache_group
            )
        if (cache is None or cache.index is None) and self.config.backend == "inductor":
            # A cold start: the warm-up runs beside the split and fake propagation.
            start_inductor_warmup(cpu=on_cpu(self.example_inputs))

        self.splitting_warnings.check(self.gm, matcher)
        split_gm, items = split_graph(self.gm, matcher)
        compilation_counter.num_piecewise_graphs_seen += len(items)
        compiled_items = [it for it in items if not it.is_splitting_graph]
        # NOTE: [eager outputs are restrided for compiled pieces] (layouts.py)
        self.layout_checks = eager_fed_layouts(
            split_gm, {it.submod_name for it in items if it.is_splitting_graph}
        )
        compilation_counter.num_piecewise_capturable_graphs_seen += len(compiled_items)
        if cache is not None:
            cache.identify({it.submod_name: it.graph for it in compiled_items})
        # See NOTE: [warm start skips fake propagation] (_plan): the fake run
        # happens only if some entry has to be compiled.
        piece_args_memo: dict[str, dict[str, tuple[Any, ...]]] = {}

        def piece_args(name: str) -> tuple[Any, ...]:
            if "all" not in piece_args_memo:
                piece_args_memo["all"] = piece_inputs(split_gm, fake_inputs)
            args = piece_args_memo["all"].get(name)
            if args is None:
                raise StitchRuntimeError(
                    f"piece {name} is never called by the split graph"
                )
            return args

        records: dict[str, PieceRecord] = {}
        reports: list[PieceReport] = []
        progress = progress_bar(
            len(compiled_items),
            "stitch: compiling pieces",
            "piece",
            enabled=len(compiled_items) >= 8 and log.isEnabledFor(logging.INFO),
        )
        for item in items:
            path = module_path_of(item.graph)
            if item.is_splitting_graph:
                reports.append(PieceReport(item.submod_name, True, path, [], 0.0, "-"))
                continue
            record, report = self._compile_piece(
                item.submod_name, item.graph, piece_args, path, cache
            )
            records[item.submod_name] = record
            reports.append(report)
            progress.update(1)
        progress.close()
        self.unfixed.report(self.config.compile_sizes)

        size_indices = {name: r.size_index for name, r in records.items()}
        # The placeholder the pieces' runnables are picked by, once per forward.
        dispatch_on = hoisted_input(split_gm, self.size, size_indices)
        code, submod_names, consts, warm_source = stitching_source(
            split_gm, cache, dispatch_on
        )
        self.guards = self.entry_guards.finish(cache)
        if cache is not None:
            cache.save_source(code, submod_names, dispatch_on)
        dump = self.config.debug_dump_path or os.environ.get(DUMP_ENV, "")
        if dump:
            write_debug_dump(dump, split_gm, code, reports)
        # NOTE: [emitted source lives in a real file] (loader.py): the cache's,
        # else the debug dump's, else a private one the loader writes.
        source_file = cache.source_path() if cache is not None else None
        if source_file is None and dump:
            source_file = os.path.join(dump, DUMP_SOURCE_FILE)
        trace_source(code)
        self.consts = consts
        # What runs: the serving source, or its profiling variant (never cached).
        run_code, run_consts, run_file, ranges = code, consts, source_file, None
        if self.profiler is not None:
            run_code, run_consts, ranges = self.profiler.variant(
                split_gm, dispatch_on, piece_list(reports)
            )
            run_file = None
        self.cudagraphed = self.cudagraphs is not None and self.cudagraphs.applies_to(
            fake_inputs
        )
        if self.cudagraphs is not None and self.cudagraphed:
            self.graphs = self.cudagraphs.plan(
                graph=self.gm,
                split_gm=split_gm,
                example_inputs=fake_inputs,
                backends=records,
                submod_names=submod_names,
                size=self.size if dispatch_on is not None else None,
            )
        # NOTE: [one plan for cold, warm and saved starts] (materialize.py):
        # here each key's runnable is the one this call compiled or loaded.
        plan = CompiledPlan(
            run_code,
            run_file,
            tuple(submod_names),
            records,
            run_consts,
            self.graphs,
        )
        fn, backends = materialize(
            plan,
            self.config,
            lambda _name, _target, entry: self.memo[entry.key][0],
            cudagraphs=self.cudagraphs if self.cudagraphed else None,
            warnings=self.range_warnings,
            split_gm=split_gm,
            ranges=ranges,
        )
        # NOTE: [pieces are installed after the loop]
        # A miss after a hit runs the fake propagation over split_gm, which must
        # call the pieces' own GraphModules, not a PiecewiseBackend; the split
        # graph (CompiledModel.split_gm) runs the compiled pieces from here on.
        for piece_name, backend in backends.items():
            split_gm.__dict__[piece_name] = backend

        # Twins report "shared": they run what their first instance loaded.
        warm = warm_source and all(
            r.cache in ("hit", "shared") for r in reports if not r.splitting
        )
        seconds = time.perf_counter() - start
        log.info(
            "stitch: graph %s: %d pieces (%d compiled, %d unique), %s start in %.2fs%s",
            graph_key[:12],
            len(items),
            len(compiled_items),
            len({tuple(e.key for e in r.entries) for r in records.values()}),
            "warm" if warm else "cold",
            seconds,
            f", cache {cache.directory}" if cache and cache.holds_source() else "",
        )
        sink.append(
            CompiledModel(
                split_gm,
                code,
                submod_names,
                backends,
                reports,
                cache.directory if cache and cache.holds_source() else None,
                warm,
                seconds,
            )
        )
        return fn

    def _fake_inputs(self) -> list[Any]:
        # NOTE: [pieces trace in the backend's fake mode] (fakes.py)
        return backend_fake_inputs(self.gm, self.example_inputs)

    def _graph_key(self, fake_inputs: list[Any]) -> str:
        text = graph_hash(self.gm) + "".join(describe_example(v) for v in fake_inputs)
        return hashlib.sha256(text.encode()).hexdigest()

    def _compile_piece(
        self,
        name: str,
        graph: fx.GraphModule,
        piece_args: Callable[[str], tuple[Any, ...]],
        module_path: str,
        cache: CompileCache | None,
    ) -> tuple[PieceRecord, PieceReport]:
        """The piece's record (its runnables are in ``self.memo``) and report."""
        plan = self._plan(name, graph, piece_args, cache)
        entries: list[EntryRecord] = []
        outcomes: list[str] = []
        piece_start = time.perf_counter()
        for target, key in zip(plan.targets, plan.keys, strict=True):
            entry, outcome = self._runnable(
                name, graph, piece_args, target, key, cache, plan.size_index
            )
            entries.append(entry)
            outcomes.append(outcome)
        seconds = time.perf_counter() - piece_start
        record = PieceRecord(
            module_path,
            plan.size_index,
            tuple(entries),
            tuple(self.layout_checks.get(name, ())),
        )
        # "shared" outcomes reuse a runnable of this call (a twin's, or this
        # piece's general one for its ranges): they neither hit nor miss.
        if all(o == "shared" for o in outcomes):
            state = "shared"
        elif "hit" in outcomes:
            state = "partial" if "miss" in outcomes else "hit"
        else:
            state = "miss"
        if cache is not None:
            self.entry_guards.note(cache)
            cache.record_piece(name, record)
        report = PieceReport(
            name,
            False,
            module_path,
            [t.describe() for t in plan.targets],
            seconds,
            state,
        )
        return record, report

    def _plan(
        self,
        name: str,
        graph: fx.GraphModule,
        piece_args: Callable[[str], tuple[Any, ...]],
        cache: CompileCache | None,
    ) -> PiecePlan:
        # NOTE: [warm start skips fake propagation]
        # A plan needs the piece's fake inputs, which come from running the split
        # graph over fake tensors (seconds on deep models).  A cache entry is keyed
        # by the whole graph and its input metadata, so the per-piece records in
        # its index (size argument, compile keys) can be used as they are, once
        # each artifact's identity agrees (see NOTE: [a recorded plan is checked
        # against its artifacts] in store/cache.py).
        recorded = cache.recorded_plan(name, graph, self.config) if cache else None
        if recorded is not None:
            size_index, targets, keys = recorded
            return PiecePlan(name, size_index, tuple(targets), tuple(keys))
        args = piece_args(name)
        size_index = self.size.piece_argument(args) if self.size is not None else None
        return plan_piece(
            name, graph, args, size_index, self.config, self.key_salt, self.unfixed
        )

    def _runnable(
        self,
        name: str,
        graph: fx.GraphModule,
        piece_args: Callable[[str], tuple[Any, ...]],
        target: Target,
        key_choice: KeyChoice,
        cache: CompileCache | None,
        size_index: int | None,
    ) -> tuple[EntryRecord, str]:
        """The entry of one target and how it came (shared, hit, miss); its
        runnable goes to ``self.memo`` under the entry's key."""
        key = self._resolve_key(key_choice)
        if key is None and cache is not None and isinstance(key_choice, StringKeys):
            key = self._key_on_disk(key_choice, cache)
        if key is not None:
            if key in self.memo:
                return EntryRecord(target.key(), key, self.memo[key][1]), "shared"
            # 1. the persistent cache
            runnable = self._from_cache(name, graph, target, key, cache, size_index)
            if runnable is not None:
                self.memo[key] = (runnable, True)
                compilation_counter.num_cache_hits += 1
                return EntryRecord(target.key(), key, True), "hit"
        # 2. compile
        if cache is not None and self.adapter.saves_artifacts:
            compilation_counter.num_cache_misses += 1
        example = example_inputs(name, piece_args(name), target, self.size)
        try:
            runnable, handle = self.adapter.compile(
                graph, example, static=target.static
            )
        except StitchRuntimeError as exc:
            raise StitchRuntimeError(
                f"piece {name} ({target.describe()}): {exc}"
            ) from exc.__cause__ or exc
        self.entry_guards.note(cache)
        if key is None:
            key = self._decide_strings(key_choice, handle)
        entry = EntryRecord(target.key(), key, False)
        if cache is not None and self.adapter.saves_artifacts:
            exact = isinstance(key_choice, StringKeys) and key == key_choice.exact
            entry = cache.save_artifact(
                name,
                graph,
                target,
                key,
                size_index,
                unwrap=bool(handle[1]),
                strings=tuple(key_choice.strings) if exact else None,
                save=lambda path: self.adapter.save(handle, path),
            )
            if entry.saved:
                # NOTE: [the compiling process runs its pieces prebuilt too]
                path = cache.artifact_path(key, ARTIFACT_FILE)
                runnable = self.adapter.published(path, bool(handle[1])) or runnable
        self.memo[key] = (runnable, entry.saved)
        return entry, "miss"

    def _resolve_key(self, choice: KeyChoice) -> str | None:
        """The compile key, or None while a string-dependence decision is pending."""
        if isinstance(choice, str):
            return choice
        decided = self.string_free.get(choice.normalized)
        if decided is None:
            return None
        return choice.normalized if decided else choice.exact

    def _key_on_disk(self, choice: StringKeys, cache: CompileCache) -> str | None:
        # NOTE: [a string decision is found on disk]
        # A verified artifact under the normalized key exists only if the run that
        # compiled it found the code free of the strings; under the exact key, only
        # if it did not.  Either way no compile is needed to decide again.
        for key, free in ((choice.normalized, True), (choice.exact, False)):
            if cache.has_artifact(key):
                self.string_free[choice.normalized] = free
                return key
        return None

    def _decide_strings(self, choice: StringKeys, handle: Any) -> str:
        source = self.adapter.generated_source(handle)
        free = source is not None and not any(
            s in source or repr(s)[1:-1] in source for s in choice.strings
        )
        self.string_free[choice.normalized] = free
        if free:
            log.debug("string constants %s do not reach compiled code", choice.strings)
        return choice.normalized if free else choice.exact

    def _from_cache(
        self,
        name: str,
        graph: fx.GraphModule,
        target: Target,
        key: str,
        cache: CompileCache | None,
        size_index: int | None,
    ) -> Any:
        if cache is None or not self.adapter.saves_artifacts:
            return None
        found = cache.lookup(name, graph, target, key, size_index)
        if found is None:
            return None
        path, unwrap, sha256 = found
        try:
            return self._load(path, unwrap, sha256)
        except StitchCacheError as exc:
            cache.load_failed(key, path, exc)
            return None

    def _load(self, path: str, unwrap: bool, sha256: str) -> Any:
        if path not in self.loaded:
            self.loaded[path] = self.adapter.load(path, unwrap, sha256)
        return self.loaded[path]
