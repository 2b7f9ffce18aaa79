"""``StitchBackend``: the torch.compile backend (split, compile pieces, stitch)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from stitch.codegen import (
    StitchCacheError,
    StitchRuntimeError,
    generate_execution_code,
    graph_hash,
    lower_execution,
    module_path_of,
    split_graph,
)
from stitch.codegen.fingerprint import describe_example
from stitch.codegen.matching import OpMatcher

from ..config import CompilationConfig
from ..counter import compilation_counter
from ..cudagraph import CUDAGraphManager
from ..loader import compile_execution_fn
from ..progress import progress_bar
from ..store.cache import SOURCE_FILE, CompileCache, sha256_file, stitch_version
from ..store.dump import PieceReport, write_debug_dump
from ..store.index import (
    INDEX_FILE,
    build_index,
    entries_by_target,
    entry_record,
    piece_record,
    plan_from_record,
)
from ..targets import Target
from .compilers import CompilerAdapter, make_adapter, start_inductor_warmup
from .fakes import backend_fake_inputs
from .layouts import LayoutChecks, eager_fed_layouts, guard_layouts
from .piecewise import PiecewiseBackend, RangeWarnings, concretize
from .plan import KeyChoice, PiecePlan, StringKeys, piece_inputs, plan_piece
from .scalars import specialize_lifted_floats
from .size import find_size, hoisted_input
from .splitting import SplittingOpWarnings

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

    def __init__(self, config: CompilationConfig | None = None, **fields: Any) -> None:
        if config is not None and fields:
            raise StitchRuntimeError("pass a CompilationConfig or fields, not both")
        self.config = config if config is not None else CompilationConfig(**fields)
        self.compiled: list[CompiledModel] = []
        # Pool, capture switch and start-up capture of every graph compiled here.
        self.cudagraphs = CUDAGraphManager(self.config)
        # Splitting ops that matched nothing, reported once per backend.
        self.splitting_warnings = SplittingOpWarnings()
        if self.config.backend == "inductor":
            start_inductor_warmup()

    def __call__(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any]
    ) -> Callable[..., Any]:
        return Compilation(
            self.config, gm, example_inputs, self.cudagraphs, self.splitting_warnings
        ).run(self.compiled)


def stitch_backend(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
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
    ) -> None:
        self.config = config
        self.cudagraphs = cudagraphs
        self.splitting_warnings = splitting_warnings or SplittingOpWarnings()
        self.gm = gm
        self.example_inputs = list(example_inputs)
        self.adapter: CompilerAdapter = make_adapter(
            config.backend, config.inductor_compile_config
        )
        self.config_hash = config.compute_hash()
        # What every compile key of this call shares.
        self.key_salt = self.adapter.name + self.config_hash
        # compile key -> runnable, shared by twins within this call
        self.memo: dict[str, Any] = {}
        self.range_warnings = RangeWarnings()
        self.layout_checks: LayoutChecks = {}
        # normalized key -> whether the compiled code is free of the piece's strings
        self.string_free: dict[str, bool] = {}
        self.loaded: dict[str, Any] = {}

    # -- the steps -----------------------------------------------------------
    def run(self, sink: list[CompiledModel]) -> Callable[..., Any]:
        start = time.perf_counter()
        if self.config.backend == "inductor":
            # Stitch's own Inductor calls start once the warm-up is done: two
            # threads never import Inductor's modules at the same time here.
            start_inductor_warmup().join()
        fake_inputs = self._fake_inputs()
        # NOTE: [lifted floats are specialized up front] (scalars.py), for
        # Inductor's tensorify pass; eager pieces run lifted floats as they are.
        if self.adapter.name == "inductor":
            specialize_lifted_floats(fake_inputs)
        compilation_counter.num_graphs_seen += 1
        compilation_counter.num_backend_compilations += 1
        self.size = find_size(self.gm, fake_inputs)
        graph_key = self._graph_key(fake_inputs)
        cache = None
        index: dict[str, Any] | None = None
        if not self.config.disable_cache:
            cache = CompileCache.for_graph(self.config, graph_key)
            index = cache.read_index()

        matcher = OpMatcher.parse(self.config.splitting_ops)
        self.splitting_warnings.check(self.gm, matcher)
        split_gm, items = split_graph(self.gm, matcher)
        compilation_counter.num_piecewise_graphs_seen += len(items)
        compiled_items = [it for it in items if not it.is_splitting_graph]
        # NOTE: [eager outputs are restrided for compiled pieces] (layouts.py)
        self.layout_checks = eager_fed_layouts(
            split_gm, {it.submod_name for it in items if it.is_splitting_graph}
        )
        compilation_counter.num_piecewise_capturable_graphs_seen += len(compiled_items)
        # NOTE: [warm start skips fake propagation]
        # Each piece's example inputs come from running the split graph over fake
        # tensors, which costs seconds on deep models.  A cache entry is keyed by
        # the whole graph and its input metadata, so the per-piece records in its
        # index (runtime-size argument, compile keys) are valid as they are; the
        # fake run happens only if some entry has to be compiled.
        piece_args_memo: dict[str, dict[str, tuple[Any, ...]]] = {}

        def piece_args(name: str) -> tuple[Any, ...]:
            if "all" not in piece_args_memo:
                piece_args_memo["all"] = piece_inputs(split_gm, fake_inputs)
            args = piece_args_memo["all"].get(name)
            if args is None:
                raise StitchRuntimeError(f"piece {name} is never called by the split graph")
            return args

        old_pieces = index.get("pieces", {}) if index else {}
        new_pieces: dict[str, Any] = {}
        backends: dict[str, PiecewiseBackend] = {}
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
            backend, record, report = self._compile_piece(
                item.submod_name, item.graph, piece_args, path, cache, old_pieces
            )
            backends[item.submod_name] = backend
            new_pieces[item.submod_name] = record
            reports.append(report)
            progress.update(1)
        progress.close()
        # NOTE: [pieces are installed after the loop]
        # A miss after a hit runs the fake propagation over split_gm, which must
        # call the pieces' own GraphModules, not a PiecewiseBackend.
        for piece_name, backend in backends.items():
            split_gm.__dict__[piece_name] = backend

        size_arguments = {name: b.sym_index for name, b in backends.items()}
        size_on = hoisted_input(split_gm, self.size, size_arguments)
        dispatch_on = size_on if self.config.dispatch == "hoisted" else None
        code, submod_names, consts, warm_source = self._stitching_source(
            split_gm, cache, index, dispatch_on
        )
        _trace_source(code)
        if self.cudagraphs is not None and self.cudagraphs.applies_to(fake_inputs):
            fn = self.cudagraphs.wrap(
                graph=self.gm,
                split_gm=split_gm,
                example_inputs=fake_inputs,
                code=code,
                backends=backends,
                submod_names=submod_names,
                consts=consts,
                size=self.size if size_on is not None else None,
            )
        else:
            fn = compile_execution_fn(code, backends, submod_names, consts)

        # Twins report "shared": they run what their first instance loaded.
        warm = warm_source and all(r.cache in ("hit", "shared") for r in reports if not r.splitting)
        if cache is not None:
            self._write_index(
                cache, index, new_pieces, code, submod_names, dispatch_on, graph_key
            )
        seconds = time.perf_counter() - start
        dump = self.config.debug_dump_path or os.environ.get(DUMP_ENV, "")
        if dump:
            write_debug_dump(dump, split_gm, code, reports)
        log.info(
            "stitch: %d pieces (%d compiled), %s start in %.2fs%s",
            len(items),
            len(compiled_items),
            "warm" if warm else "cold",
            seconds,
            f", cache {cache.directory}" if cache else "",
        )
        sink.append(
            CompiledModel(
                split_gm, code, submod_names, backends, reports,
                cache.directory if cache else None, warm, seconds,
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
        old_pieces: dict[str, Any],
    ) -> tuple[PiecewiseBackend, dict[str, Any], PieceReport]:
        old = old_pieces.get(name)
        plan = self._plan(name, graph, piece_args, old)
        old_entries = entries_by_target(old)
        runnables: dict[Target, Any] = {}
        entries: list[dict[str, Any]] = []
        outcomes: list[str] = []
        piece_start = time.perf_counter()
        for target, key in zip(plan.targets, plan.keys):
            runnable, entry, outcome = self._runnable(
                name, graph, piece_args, target, key, cache, old_entries.get(target.key())
            )
            runnables[target] = guard_layouts(runnable, self.layout_checks.get(name, ()))
            entries.append(entry)
            outcomes.append(outcome)
        seconds = time.perf_counter() - piece_start
        backend = PiecewiseBackend(
            name, plan.size_argument, runnables, module_path, self.range_warnings
        )
        if all(o == "hit" for o in outcomes):
            state = "hit"
        elif all(o == "shared" for o in outcomes):
            state = "shared"
        elif any(o == "hit" for o in outcomes):
            state = "partial"
        else:
            state = "miss"
        record = piece_record(module_path, plan.size_argument, entries)
        report = PieceReport(
            name, False, module_path, [t.describe() for t in plan.targets], seconds, state
        )
        return backend, record, report

    def _plan(
        self,
        name: str,
        graph: fx.GraphModule,
        piece_args: Callable[[str], tuple[Any, ...]],
        old: Any,
    ) -> PiecePlan:
        # NOTE: [warm start skips fake propagation]
        # A plan needs the piece's fake inputs, which come from running the split
        # graph over fake tensors (seconds on deep models).  A cache entry is keyed
        # by the whole graph and its input metadata, so the per-piece records in
        # its index (size argument, compile keys) are valid as they are.
        recorded = plan_from_record(old, self.config)
        if recorded is not None:
            size_argument, targets, keys = recorded
            return PiecePlan(name, size_argument, tuple(targets), tuple(keys))
        args = piece_args(name)
        size_argument = self.size.piece_argument(args) if self.size is not None else None
        return plan_piece(name, graph, args, size_argument, self.config, self.key_salt)

    def _runnable(
        self,
        name: str,
        graph: fx.GraphModule,
        piece_args: Callable[[str], tuple[Any, ...]],
        target: Target,
        key_choice: KeyChoice,
        cache: CompileCache | None,
        old_entry: dict[str, Any] | None,
    ) -> tuple[Any, dict[str, Any], str]:
        key = self._resolve_key(key_choice)
        entry = entry_record(target)
        if key is not None:
            entry["key"] = key
            if key in self.memo:
                runnable, saved = self.memo[key]
                entry.update(saved)
                return runnable, entry, "shared"
            # 1. the persistent cache
            hit = self._from_cache(name, target, key, cache, old_entry)
            if hit is not None:
                runnable, saved = hit
                entry.update(saved)
                self.memo[key] = (runnable, saved)
                compilation_counter.num_cache_hits += 1
                return runnable, entry, "hit"
        # 2. compile
        if cache is not None and self.adapter.saves_artifacts:
            compilation_counter.num_cache_misses += 1
        example = self._example_inputs(name, piece_args(name), target)
        try:
            runnable, handle = self.adapter.compile(graph, example, static=target.static)
        except StitchRuntimeError as exc:
            raise StitchRuntimeError(
                f"piece {name} ({target.describe()}): {exc}"
            ) from exc.__cause__ or exc
        if key is None:
            key = self._decide_strings(key_choice, handle)
        entry["key"] = key
        saved: dict[str, Any] = {}
        if cache is not None and self.adapter.saves_artifacts:
            relative = cache.artifact_relpath(key)
            try:
                self.adapter.save(handle, cache.path(relative))
                saved = {
                    "artifact": relative,
                    "sha256": sha256_file(cache.path(relative)),
                    "unwrap": bool(handle[1]),
                }
            except StitchCacheError as exc:
                log.warning("stitch cache: %s; piece %s stays uncached", exc, name)
        entry.update(saved)
        self.memo[key] = (runnable, saved)
        return runnable, entry, "miss"

    def _resolve_key(self, choice: KeyChoice) -> str | None:
        """The compile key, or None while a string-dependence decision is pending."""
        if isinstance(choice, str):
            return choice
        decided = self.string_free.get(choice.normalized)
        if decided is None:
            return None
        return choice.normalized if decided else choice.exact

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
        target: Target,
        key: str,
        cache: CompileCache | None,
        old_entry: dict[str, Any] | None,
    ) -> tuple[Any, dict[str, Any]] | None:
        if cache is None or not self.adapter.saves_artifacts or old_entry is None:
            return None
        if old_entry.get("key") != key:
            cache.fault(cache.path(INDEX_FILE), f"entry {name}/{target.key()} has a stale key")
            return None
        path = cache.verified(old_entry.get("artifact"), old_entry.get("sha256"))
        if path is None:
            return None
        unwrap = bool(old_entry.get("unwrap", False))
        try:
            runnable = self._load(path, unwrap)
        except StitchCacheError as exc:
            cache.fault(path, str(exc))
            return None
        saved = {"artifact": old_entry["artifact"], "sha256": old_entry["sha256"], "unwrap": unwrap}
        return runnable, saved

    def _load(self, path: str, unwrap: bool) -> Any:
        if path not in self.loaded:
            self.loaded[path] = self.adapter.load(path, unwrap)  # type: ignore[call-arg]
        return self.loaded[path]

    def _example_inputs(
        self, name: str, args: tuple[Any, ...], target: Target
    ) -> list[Any]:
        if not target.static:
            return list(args)
        assert self.size is not None  # a static target exists only for a dynamic piece
        try:
            return [concretize(a, self.size.symbol, target.lo) for a in args]
        except ValueError as exc:
            raise StitchRuntimeError(
                f"piece {name}: cannot specialize to {target.describe()}: {exc}"
            ) from exc

    def _stitching_source(
        self,
        split_gm: fx.GraphModule,
        cache: CompileCache | None,
        index: dict[str, Any] | None,
        dispatch_on: str | None,
    ) -> tuple[str, list[str], list[Any], bool]:
        if cache is not None and index is not None:
            record = index.get("source") or {}
            path = cache.verified(record.get("file"), record.get("sha256"))
            if path is not None and record.get("dispatch_on") != dispatch_on:
                path = None  # emitted for the other dispatch style: regenerate
            if path is not None:
                _, names, consts = lower_execution(split_gm, dispatch_on=dispatch_on)
                if names == record.get("submod_names"):
                    with open(path, encoding="utf-8") as f:
                        code = f.read()
                    # verified() hashed the file; hash what we read, too, so a
                    # file replaced in between is never executed.
                    if hashlib.sha256(code.encode()).hexdigest() == record["sha256"]:
                        return code, names, consts, True
                    cache.fault(path, "changed while it was being read")
                else:
                    cache.fault(path, "calls a different piece order than this graph")
        code, names, consts = generate_execution_code(split_gm, dispatch_on=dispatch_on)
        return code, names, consts, False

    def _write_index(
        self,
        cache: CompileCache,
        old: dict[str, Any] | None,
        pieces: dict[str, Any],
        code: str,
        submod_names: list[str],
        dispatch_on: str | None,
        graph_key: str,
    ) -> None:
        try:
            sha = cache.write_text(SOURCE_FILE, code)
            data = build_index(
                stitch_version=stitch_version(),
                config_hash=self.config_hash,
                graph_key=graph_key,
                backend=self.config.backend,
                source_file=SOURCE_FILE,
                source_sha256=sha,
                submod_names=submod_names,
                dispatch_on=dispatch_on,
                pieces=pieces,
            )
            if data != old:
                cache.write_index(data)
        except OSError as exc:
            log.warning("stitch cache: could not write %s (%s)", cache.directory, exc)


def _trace_source(code: str) -> None:
    torch._logging.trace_structured(
        "artifact",
        metadata_fn=lambda: {"name": "stitch_execution_fn", "encoding": "string"},
        payload_fn=lambda: code,
    )
