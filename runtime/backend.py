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
    structural_hash,
)
from stitch.codegen.fingerprint import string_constants
from stitch.codegen.fingerprint import describe_example

from .cache import SOURCE_FILE, CompileCache, sha256_file, stitch_version
from .compilers import CompilerAdapter, make_adapter, start_inductor_warmup
from .config import CompilationConfig
from .counter import compilation_counter
from .cudagraph import CUDAGraphManager
from .dump import PieceReport, progress_bar, write_debug_dump
from .loader import compile_execution_fn
from .piecewise import (
    PiecewiseBackend,
    RangeWarnings,
    Target,
    concretize,
    runtime_symbol,
    targets_for,
)

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
        if self.config.backend == "inductor":
            start_inductor_warmup()

    def __call__(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any]
    ) -> Callable[..., Any]:
        return _Compilation(self.config, gm, example_inputs, self.cudagraphs).run(
            self.compiled
        )


def stitch_backend(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
    """The ``backend="stitch"`` entry point: a default :class:`CompilationConfig`."""
    return StitchBackend()(gm, example_inputs)


class _Compilation:
    """One backend call."""

    def __init__(
        self,
        config: CompilationConfig,
        gm: fx.GraphModule,
        example_inputs: Sequence[Any],
        cudagraphs: CUDAGraphManager | None = None,
    ) -> None:
        self.config = config
        self.cudagraphs = cudagraphs
        self.gm = gm
        self.example_inputs = list(example_inputs)
        self.adapter: CompilerAdapter = make_adapter(
            config.backend, config.inductor_compile_config
        )
        self.config_hash = config.compute_hash()
        # compile key -> runnable, shared by twins within this call
        self.memo: dict[str, Any] = {}
        self.range_warnings = RangeWarnings()
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
        compilation_counter.num_graphs_seen += 1
        compilation_counter.num_backend_compilations += 1
        fake_inputs = self._fake_inputs()
        graph_key = self._graph_key(fake_inputs)
        cache = None
        index: dict[str, Any] | None = None
        if not self.config.disable_cache:
            cache = CompileCache.for_graph(self.config, graph_key)
            index = cache.read_index()

        split_gm, items = split_graph(self.gm, self.config.splitting_ops)
        compilation_counter.num_piecewise_graphs_seen += len(items)
        compiled_items = [it for it in items if not it.is_splitting_graph]
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
                piece_args_memo["all"] = _piece_inputs(split_gm, fake_inputs)
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

        size_on = _dispatch_placeholder(split_gm, backends)
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
                size_on=size_on,
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
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(self.example_inputs):
            raise StitchRuntimeError(
                f"graph has {len(placeholders)} placeholders but "
                f"{len(self.example_inputs)} example inputs were given"
            )
        fake_mode = torch._guards.detect_fake_mode(self.example_inputs)
        values = []
        for node, example in zip(placeholders, self.example_inputs):
            value = node.meta.get("example_value", node.meta.get("val"))
            if value is None:
                if isinstance(example, torch.Tensor) and fake_mode is not None:
                    value = fake_mode.from_tensor(example)
                else:
                    value = example
            values.append(value)
        return values

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
        plan = self._plan_from_index(old)
        if plan is None:
            args = piece_args(name)
            sym_index, symbol = runtime_symbol(args)
            targets = targets_for(
                self.config.compile_sizes,
                self.config.compile_ranges(),
                sym_index is not None,
            )
            if sym_index is not None:
                targets = _reachable(targets, args[sym_index], symbol, name)
            keys = self._keys(graph, args, targets)
        else:
            sym_index, targets, keys = plan
        old_entries = {
            e.get("target"): e
            for e in (old or {}).get("entries", [])
            if isinstance(e, dict)
        }
        runnables: dict[Target, Any] = {}
        entries: list[dict[str, Any]] = []
        outcomes: list[str] = []
        piece_start = time.perf_counter()
        for target, key in zip(targets, keys):
            runnable, entry, outcome = self._runnable(
                name, graph, piece_args, target, key, cache, old_entries.get(target.key())
            )
            runnables[target] = runnable
            entries.append(entry)
            outcomes.append(outcome)
        seconds = time.perf_counter() - piece_start
        backend = PiecewiseBackend(
            name, sym_index, runnables, module_path, self.range_warnings
        )
        if all(o == "hit" for o in outcomes):
            state = "hit"
        elif all(o == "shared" for o in outcomes):
            state = "shared"
        elif any(o == "hit" for o in outcomes):
            state = "partial"
        else:
            state = "miss"
        record = {"module_path": module_path, "sym_index": sym_index, "entries": entries}
        report = PieceReport(
            name, False, module_path, [t.describe() for t in targets], seconds, state
        )
        return backend, record, report

    def _keys(
        self, graph: fx.GraphModule, args: tuple[Any, ...], targets: list[Target]
    ) -> list[Any]:
        """Compile keys per target: a plain key, or a _StringKeys choice.

        NOTE: [layer names do not defeat dedup]
        Pieces that differ only in string constants (a layer name passed to an op)
        share a normalized key.  The first of them is compiled with its own strings;
        when none of them appears in the code Inductor generated (the op was
        decomposed or the string was dead), every twin reuses that artifact.
        Otherwise the strings are baked into the code and each distinct set of
        strings compiles on its own.
        """
        common = self.adapter.name + self.config_hash
        strings = string_constants(graph)
        if not strings:
            base = structural_hash(graph, args) + common
            return [_digest(f"{base}|{t.key()}") for t in targets]
        normalized = structural_hash(graph, args, abstract_strings=True) + common
        exact = normalized + repr(strings)
        return [
            _StringKeys(
                _digest(f"{normalized}|{t.key()}"), _digest(f"{exact}|{t.key()}"), strings
            )
            for t in targets
        ]

    def _plan_from_index(
        self, old: Any
    ) -> tuple[int | None, list[Target], list[str]] | None:
        """Runtime-size argument, targets and keys recorded for a piece, if usable."""
        if not isinstance(old, dict) or "sym_index" not in old:
            return None
        sym_index = old["sym_index"]
        if sym_index is not None and type(sym_index) is not int:
            return None
        possible = {
            t.key(): t
            for t in targets_for(
                self.config.compile_sizes,
                self.config.compile_ranges(),
                sym_index is not None,
            )
        }
        targets: list[Target] = []
        keys: list[str] = []
        for e in old.get("entries", []):
            if not isinstance(e, dict) or e.get("target") not in possible:
                return None
            if not isinstance(e.get("key"), str) or not e["key"]:
                return None
            targets.append(possible[e["target"]])
            keys.append(e["key"])
        if Target("general") not in targets:
            return None
        return sym_index, targets, keys

    def _runnable(
        self,
        name: str,
        graph: fx.GraphModule,
        piece_args: Callable[[str], tuple[Any, ...]],
        target: Target,
        key_choice: Any,
        cache: CompileCache | None,
        old_entry: dict[str, Any] | None,
    ) -> tuple[Any, dict[str, Any], str]:
        key = self._resolve_key(key_choice)
        entry: dict[str, Any] = {"target": target.key()}
        if target.kind != "general":
            entry["range"] = [target.lo, target.hi]
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
        args = piece_args(name)
        _, symbol = runtime_symbol(args)
        example = self._example_inputs(name, args, symbol, target)
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

    def _resolve_key(self, choice: Any) -> str | None:
        """The compile key, or None while a string-dependence decision is pending."""
        if isinstance(choice, str):
            return choice
        decided = self.string_free.get(choice.normalized)
        if decided is None:
            return None
        return choice.normalized if decided else choice.exact

    def _decide_strings(self, choice: Any, handle: Any) -> str:
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
            cache.fault(cache.path("index.py"), f"entry {name}/{target.key()} has a stale key")
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
        self, name: str, args: tuple[Any, ...], symbol: Any, target: Target
    ) -> list[Any]:
        if not target.static:
            return list(args)
        try:
            return [concretize(a, symbol, target.lo) for a in args]
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
            data = {
                "format": 1,
                "stitch_version": stitch_version(),
                "torch_version": torch.__version__,
                "config_hash": self.config_hash,
                "graph_key": graph_key,
                "backend": self.config.backend,
                "source": {
                    "file": SOURCE_FILE,
                    "sha256": sha,
                    "submod_names": list(submod_names),
                    "dispatch_on": dispatch_on,
                },
                "pieces": pieces,
            }
            if data != old:
                cache.write_index(data)
        except OSError as exc:
            log.warning("stitch cache: could not write %s (%s)", cache.directory, exc)


def _reachable(targets: list[Target], size: Any, symbol: Any, name: str) -> list[Target]:
    """Drop static sizes and ranges the runtime size can never take.

    Dynamo bounds a backed size below by 2 (size 1 gets its own static graph),
    so compiling size 1 into the dynamic graph would only waste a compile.
    """
    try:
        bounds = size.node.shape_env.var_to_range.get(symbol)
        lower, upper = int(bounds.lower), bounds.upper
        upper = int(upper) if upper.is_finite else None
    except Exception:  # noqa: BLE001 - no range information: keep every target
        return targets
    kept = []
    for t in targets:
        if t.kind != "general" and (t.hi < lower or (upper is not None and t.lo > upper)):
            log.debug("piece %s: %s is outside the size's range [%s, %s]", name,
                      t.describe(), lower, upper)
            continue
        kept.append(t)
    return kept


@dataclasses.dataclass(frozen=True)
class _StringKeys:
    """Keys of a piece with string constants, before the string check."""

    normalized: str
    exact: str
    strings: list[str]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _dispatch_placeholder(
    split_gm: fx.GraphModule, backends: dict[str, PiecewiseBackend]
) -> str | None:
    """The one top-level placeholder every dynamic piece sizes itself by, if any.

    Hoisting the size dispatch into the emitted function is only sound when all
    pieces read their runtime size from the same graph input.
    """
    sources: set[str] = set()
    for node in split_gm.graph.nodes:
        if node.op != "call_module" or node.target not in backends:
            continue
        index = backends[node.target].sym_index
        if index is None:
            continue
        arg = node.args[index] if index < len(node.args) else None
        if not (isinstance(arg, fx.Node) and arg.op == "placeholder"):
            return None
        sources.add(arg.name)
    return sources.pop() if len(sources) == 1 else None


def _piece_inputs(split_gm: fx.GraphModule, fake_inputs: list[Any]) -> dict[str, tuple[Any, ...]]:
    """Run the split graph over fake tensors; record each piece's inputs."""
    recorded: dict[str, tuple[Any, ...]] = {}

    class Recorder(fx.Interpreter):
        def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
            recorded.setdefault(target, tuple(args))
            return super().call_module(target, args, kwargs)

    fake_mode = next(
        (v.fake_mode for v in fake_inputs if isinstance(v, torch._subclasses.FakeTensor)),
        None,
    )
    if fake_mode is None:
        from torch._subclasses.fake_tensor import FakeTensorMode

        fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        fake_inputs = [
            fake_mode.from_tensor(v) if isinstance(v, torch.Tensor) else v
            for v in fake_inputs
        ]
    with fake_mode:
        Recorder(split_gm).run(*fake_inputs)
    return recorded


def _trace_source(code: str) -> None:
    torch._logging.trace_structured(
        "artifact",
        metadata_fn=lambda: {"name": "stitch_execution_fn", "encoding": "string"},
        payload_fn=lambda: code,
    )
