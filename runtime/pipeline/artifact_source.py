"""``ArtifactSource``: where the runnable of every compile key comes from.

NOTE: [one owner for a piece's runnable]
A piece's runnable for one shape target can come from five places: a repeated piece
already handled in this call (the memo), the cache entry (lookup, then load),
or a compile (then save and publish, and run the published form).  A key whose
piece holds string constants is decided after the compile, or from what the
cache holds (see NOTE: [a string decision is found on disk]).  The cold
compile, the warm start and the saved forward all get their runnables here;
nothing else asks whether the compiler backend saves artifacts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch.fx as fx

from stitch.core import StitchCacheError, StitchRuntimeError

from ..config import CompilationConfig
from ..counter import compilation_counter
from ..store.artifacts import ARTIFACT_FILE
from ..store.cache import CompileCache
from ..store.index import EntryRecord, PieceRecord
from ..targets import Target
from .compilers import ADAPTERS, CompilerAdapter, make_adapter
from .piece_plan import KeyChoice, PiecePlan, StringKeys
from .piecewise import Runnable
from .warm_load import WarmLoadFailed, warm_step

log = logging.getLogger("stitch")


@dataclasses.dataclass(frozen=True)
class Piece:
    """What a compile needs of one piece: its graph and its example inputs."""

    name: str
    graph: fx.GraphModule
    size_index: int | None
    # The example inputs of a target (fake propagation runs only when called).
    example: Callable[[Target], Sequence[Any]]


def config_adapter(config: CompilationConfig) -> CompilerAdapter:
    """The compiler adapter that ``config`` names."""
    return make_adapter(
        config.backend,
        config.inductor_compile_config,
        config.inductor_passes,
        config.compile_sizes_inductor_config,
    )


def key_salt(adapter: CompilerAdapter) -> str:
    """What every compile key of ``adapter`` holds besides the config's hash:
    its name, and for Inductor Stitch's own passes (NOTE: [Stitch's own passes
    run on every piece] in passes/post_grad_hook.py)."""
    if adapter.name != "inductor":
        return adapter.name
    from ..passes.own import own_passes_key

    return f"{adapter.name}+{own_passes_key()}"


class ArtifactSource:
    """The runnables of one compilation (or one saved forward), by compile key.

    ``cache`` is the graph's cache entry (None: nothing is looked up or saved);
    ``note_guards`` runs after each compile, before anything is saved under the
    guards it may have added (see ``entry.py``).
    """

    def __init__(
        self,
        config: CompilationConfig,
        cache: CompileCache | None = None,
        *,
        adapter: CompilerAdapter | None = None,
        note_guards: Callable[[], None] = lambda: None,
    ) -> None:
        self.adapter = adapter or config_adapter(config)
        self.cache = cache
        self.note_guards = note_guards
        # compile key -> (runnable, saved), shared by repeated pieces and ranges
        self.memo: dict[str, tuple[Runnable, bool]] = {}
        # normalized key -> whether the compiled code is free of the piece's strings
        self.string_free: dict[str, bool] = {}
        # (path, unwrap, sha256) -> runnable: each artifact is verified and loaded once
        self.loaded: dict[tuple[str, bool, str], Runnable] = {}
        # Pieces this source runs uncompiled while compile workers build them
        # (a tiered start's DeferredSource, tiered/deferred.py); none here.
        self.deferred: dict[str, fx.GraphModule] = {}

    def begin_build(self) -> None:
        """Start what the pieces' compiles will wait for, as the split begins
        (a forked tier's probe: NOTE: [a forked tier probes as its build
        begins], tiered/forked_workers.py); nothing here."""

    @staticmethod
    def saves(backend: str) -> bool:
        """Whether the compiler backend ``backend`` (``CompilationConfig.backend``)
        saves artifacts: whether its pieces can start warm."""
        return backend in ADAPTERS and make_adapter(backend, {}).artifacts is not None

    @property
    def caching(self) -> bool:
        return self.cache is not None and self.adapter.artifacts is not None

    # -- the compile pipeline ------------------------------------------------
    def record(
        self,
        piece: Piece,
        plan: PiecePlan,
        module_path: str,
        layouts: Sequence[Any],
    ) -> tuple[PieceRecord, list[str]]:
        """The record of ``piece`` once each target of ``plan`` has its entry
        (:meth:`entry`), and how each came."""
        entries: list[EntryRecord] = []
        outcomes: list[str] = []
        for target, key in zip(plan.targets, plan.keys, strict=True):
            entry, outcome = self.entry(piece, target, key)
            entries.append(entry)
            outcomes.append(outcome)
        record = PieceRecord(
            module_path, plan.size_index, tuple(entries), tuple(layouts)
        )
        return record, outcomes

    def entry(
        self, piece: Piece, target: Target, choice: KeyChoice
    ) -> tuple[EntryRecord, str]:
        """The entry of ``target`` and how its runnable came: "shared" (this call
        has it), "hit" (loaded), "miss" (compiled) or "refused" (it runs
        uncompiled: its compiled form was found wrong)."""
        key = self._resolve_key(choice)
        if key is None and self.cache is not None and isinstance(choice, StringKeys):
            key = self._key_on_disk(choice, self.cache)
        if key is not None:
            if key in self.memo:
                return EntryRecord(target.key(), key, self.memo[key][1]), "shared"
            why = self.cache.refusal(key) if self.cache is not None else None
            if why is not None:
                # NOTE: [a piece that compiled wrong] (store/piece_store.py)
                log.warning(
                    "stitch: piece %s (%s) runs uncompiled: %s (recorded in %s; "
                    "delete that folder to compile it again)",
                    piece.name,
                    target.describe(),
                    why,
                    self.cache.directory,
                )
                self.memo[key] = (piece.graph.forward, False)
                return EntryRecord(target.key(), key, False), "refused"
            runnable = self._from_cache(piece, target, key)
            if runnable is not None:
                self.memo[key] = (runnable, True)
                compilation_counter.num_cache_hits += 1
                return EntryRecord(target.key(), key, True), "hit"
        if self.caching:
            compilation_counter.num_cache_misses += 1
        return self._compile(piece, target, choice, key), "miss"

    def runnable(self, name: str, target: Target, entry: EntryRecord) -> Runnable:
        """The runnable of a recorded entry: this call's, else loaded from the
        cache (a saved forward, which compiles nothing)."""
        found = self.memo.get(entry.key)
        if found is not None:
            return found[0]
        cache = self.cache
        if cache is None or cache.index is None or self.adapter.artifacts is None:
            raise StitchCacheError(f"piece {name} ({entry.target}): no cache entry")
        why = cache.refusal(entry.key)
        if why is not None:
            raise StitchCacheError(
                f"piece {name} ({entry.target}) runs uncompiled: {why}"
            )
        size_index = cache.index.pieces[name].size_index
        runnable = self._load_entry(cache, name, None, target, entry, size_index)
        self.memo[entry.key] = (runnable, True)
        return runnable

    def landed(
        self,
        name: str,
        graph: fx.GraphModule,
        target: Target,
        entry: EntryRecord,
        size_index: int | None,
    ) -> Runnable:
        """The runnable of an entry a compile worker saved since this call
        looked (NOTE: [a tiered start]), loaded from the cache once for all
        repeated pieces; raises StitchCacheError when it does not load."""
        if self.cache is None:
            raise StitchCacheError(f"piece {name} ({entry.target}): no cache entry")
        self.cache.look_again(entry.key)
        return self._load_entry(self.cache, name, graph, target, entry, size_index)

    def _load_entry(
        self,
        cache: CompileCache,
        name: str,
        graph: fx.GraphModule | None,
        target: Target,
        entry: EntryRecord,
        size_index: int | None,
    ) -> Runnable:
        artifact = cache.lookup(name, graph, target, entry.key, size_index)
        if artifact is None:
            why = "; ".join(cache.faults) or f"no usable artifact in {cache.directory}"
            raise StitchCacheError(f"piece {name} ({entry.target}): {why}")
        return self._load(artifact)

    # -- the steps -----------------------------------------------------------
    def _from_cache(self, piece: Piece, target: Target, key: str) -> Runnable | None:
        cache = self.cache
        if cache is None or self.adapter.artifacts is None:
            return None
        # NOTE: [a warm load that fails compiles instead] (warm_load.py)
        what = f"piece {piece.name} ({target.describe()}), key {key[:12]}"
        with warm_step(cache.directory, "pieces", what):
            artifact = cache.lookup(
                piece.name, piece.graph, target, key, piece.size_index
            )
            if artifact is None:
                return None
            try:
                return self._load(artifact)
            except WarmLoadFailed:
                raise
            except StitchCacheError as exc:
                cache.load_failed(key, artifact[0], exc)
                return None

    def _load(self, artifact: tuple[str, bool, str]) -> Runnable:
        if artifact not in self.loaded:
            assert self.adapter.artifacts is not None  # asked where it saves
            self.loaded[artifact] = self.adapter.artifacts.load(*artifact)
        return self.loaded[artifact]

    def _compile(
        self, piece: Piece, target: Target, choice: KeyChoice, key: str | None
    ) -> EntryRecord:
        try:
            runnable, handle = self.adapter.compile(
                piece.graph, piece.example(target), static=target.static
            )
        except StitchRuntimeError as exc:
            raise StitchRuntimeError(
                f"piece {piece.name} ({target.describe()}): {exc}"
            ) from exc.__cause__ or exc
        self.note_guards()
        if key is None:
            assert isinstance(choice, StringKeys)  # a str choice is always resolved
            key = self._decide_strings(choice, handle)
        entry = EntryRecord(target.key(), key, False)
        cache = self.cache
        store = self.adapter.artifacts
        if cache is not None and store is not None:
            exact = isinstance(choice, StringKeys) and key == choice.exact
            entry = cache.save_artifact(
                piece.name,
                piece.graph,
                target,
                key,
                piece.size_index,
                unwrap=bool(handle[1]),
                strings=tuple(choice.strings) if exact else None,
                save=lambda path: store.save(handle, path),
            )
            if entry.saved:
                # NOTE: [the compiling process runs its pieces prebuilt too]
                path = cache.artifact_path(key, ARTIFACT_FILE)
                runnable = store.published(path, bool(handle[1])) or runnable
        self.memo[key] = (runnable, entry.saved)
        return entry

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
