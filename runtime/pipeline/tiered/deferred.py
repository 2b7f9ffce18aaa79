"""Whether a backend call starts tiered, and what it serves meanwhile.

The decision (:func:`tiered_off`), the compile workers' number
(:func:`default_workers`), their getting ready beside the split
(:func:`prepare_compiles`), and the serving process's artifact source while
they work (:class:`DeferredSource`).  NOTE: [a tiered start] (``tier.py``)
says how the pieces come back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from ...config import CompilationConfig
from ...store.index import EntryRecord
from ...targets import Target
from ..artifact_source import ArtifactSource, Piece
from ..compilers import CompilerAdapter
from ..inductor_warmup import on_cpu
from ..piece_plan import KeyChoice, StringKeys
from .worker_process import START_ENV, needs_spawn

log = logging.getLogger("stitch")


def tiered_off(
    config: CompilationConfig,
    example_inputs: Sequence[Any],
    cache: Any,
    method: str,
) -> str | None:
    """Why a tiered start does not apply to this backend call (None: it does);
    ``method`` is how its workers would start (``worker_process.start_method``)."""
    if not config.tiered_start:
        return "off"
    if config.backend != "inductor":
        return f"the {config.backend} backend compiles nothing"
    if cache is None or not cache.writable:
        return "no writable cache entry to bring compiled pieces back through"
    if method == "fork":
        why = needs_spawn(example_inputs) or (
            "" if hasattr(os, "fork") else "this platform cannot fork"
        )
        if why:
            return f"${START_ENV}=fork, but {why}: compile workers must be spawned"
    return None


def default_workers(pieces: int) -> int:
    """One compile worker per two cores, at most four and at most ``pieces``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores // 2, pieces))


class DeferredSource(ArtifactSource):
    """The serving process's artifact source in a tiered start: what the cache
    holds loads as always; what it lacks runs as the piece's GraphModule and
    is named in ``deferred``, for the compile workers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deferred_keys: set[str] = set()
        # Each deferred piece's compile key: repeated pieces share one, and one worker
        # compiles it (the others of the key are "shared" there).
        self.key_of: dict[str, str] = {}

    def entry(
        self, piece: Piece, target: Target, choice: KeyChoice
    ) -> tuple[EntryRecord, str]:
        record, outcome = super().entry(piece, target, choice)
        if outcome == "shared" and record.key in self.deferred_keys:
            # A repeated piece of a deferred piece runs uncompiled too, and is swapped.
            self.deferred[piece.name] = piece.graph
            self.key_of[piece.name] = record.key
        return record, outcome

    def _compile(
        self, piece: Piece, target: Target, choice: KeyChoice, key: str | None
    ) -> EntryRecord:
        if key is None:  # decided by the worker's compile; a placeholder here
            assert isinstance(choice, StringKeys)
            key = choice.exact
        self.deferred[piece.name] = piece.graph
        self.deferred_keys.add(key)
        self.key_of[piece.name] = key
        self.memo.setdefault(key, (piece.graph.forward, False))
        return EntryRecord(target.key(), key, False)


def prepare_compiles(
    config: CompilationConfig,
    example_inputs: Sequence[Any],
    adapter: CompilerAdapter,
    off: str | None,
    worker_start: str,
    cache: Any,
    note_guards: Callable[[], None],
    spawned_pool: Any,
) -> ArtifactSource:
    """The call's artifact source over ``cache``.  ``off`` says why the call
    does not start tiered (None: it does); the call is cold when ``cache``
    holds no index.  A cold call that will spawn its workers has
    ``spawned_pool`` start them now, if the backend did not (NOTE: [pre-started
    compile workers])."""
    cold = cache is None or cache.index is None
    if off not in (None, "off"):
        log.info("stitch: no tiered start: %s", off)
    if off is not None and cold:
        # A cold start: the warm-up runs beside the split and fake propagation.
        adapter.warm_up(cpu=on_cpu(example_inputs))
    elif cold and worker_start == "spawn":
        # Spawned workers load torch and Inductor beside the split instead.
        spawned_pool.start(cpu=on_cpu(example_inputs))
    source = ArtifactSource if off is not None else DeferredSource
    return source(config, cache, adapter=adapter, note_guards=note_guards)
