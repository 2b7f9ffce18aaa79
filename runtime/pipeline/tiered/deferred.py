"""Whether a backend call starts tiered, and what it serves meanwhile.

The decision (:func:`tiered_decision`, :func:`tiered_off`), the compile workers'
getting ready beside the split
(:func:`prepare_compiles`), and the serving process's artifact source while
they work (:class:`DeferredSource`).  NOTE: [a tiered start] (``tier.py``)
says how the pieces come back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...config import CompilationConfig
from ...store.index import EntryRecord
from ...targets import Target
from ...workers.priority import niceness
from ...workers.serving_first import controller
from ...workers.start_method import START_ENV, needs_spawn, start_method
from ..artifact_source import ArtifactSource, Piece
from ..compilers import CompilerAdapter
from ..inductor_warmup import on_cpu
from ..piece_plan import KeyChoice, StringKeys

log = logging.getLogger("stitch")


# NOTE: [where a tiered start is the default]
# A config that leaves ``tiered_start`` unset (None) gets the entry point's
# default.  A backend call (torch.compile and StitchBackend, transformers'
# engine and server, vLLM's backend) starts tiered for a graph on the CPU,
# where it never lost in the measurements (docs/cold_start.md, "Where it is
# on"): its first output within about a second of Dynamo alone, the same
# numbers and tokens throughout, the same speed once the last piece is
# swapped in.  It stays off by default:
# - for a graph on a GPU: each spawned worker holds a CUDA context (hundreds
#   of MB of device memory, taken while an engine sizes its KV cache from
#   what is free), and the tiered start under CUDA graphs has not run in full
#   on one yet;
# - for aot_compile's own backend (saved/aot.py): the saved forward is written
#   once every piece is swapped in, which takes forwards after the compile,
#   or at a normal exit once every piece has landed, so a process that
#   compiles and exits would wait for the whole compile there anyway, and one
#   killed before would leave nothing saved;
# - for stitch run, which times compiled forwards and so waits for the last
#   swap anyway (cli/run_cmd.py).
# ``$STITCH_TIERED_START=0`` turns the default off for a whole process tree
# (the test suite's conftest does); a config's own True or False wins.
DEFAULT_ENV = "STITCH_TIERED_START"


def tiered_decision(
    config: CompilationConfig, example_inputs: Sequence[Any], cache: Any, pool: Any
) -> tuple[str, str | None]:
    """How this backend call's compile workers would start (``fork`` or
    ``spawn``: ``workers/start_method.start_method``, decided and warned about once),
    and why a tiered start does not apply to it (None: it does)."""
    method = "fork"
    if config.tiered_start is not False:
        method = start_method(example_inputs)
    return method, tiered_off(config, example_inputs, cache, method, pool)


def tiered_off(
    config: CompilationConfig,
    example_inputs: Sequence[Any],
    cache: Any,
    method: str,
    pool: Any,
) -> str | None:
    """Why a tiered start does not apply (None: it does) to a call whose
    workers would start by ``method``: "off" when it is not asked for, or the
    default does not apply (quietly), or no worker can be started here
    (``pool.cannot_start``, said once by the pool: NOTE: [a process that
    cannot start compile workers])."""
    if not asks_tiered(config, example_inputs):
        return "off"
    asked = config.tiered_start
    why = None
    if config.backend != "inductor":
        why = f"the {config.backend} backend compiles nothing"
    elif cache is None or not cache.writable:
        why = "no writable cache entry to bring compiled pieces back through"
    elif method == "fork":
        cannot = needs_spawn(example_inputs) or (
            "" if hasattr(os, "fork") else "this platform cannot fork"
        )
        if cannot:
            pool.refuse(f"${START_ENV}=fork, but {cannot}: they must be spawned")
    if why is None and pool.cannot_start is not None:
        return "off"
    return "off" if why and asked is None else why


def asks_tiered(config: CompilationConfig, example_inputs: Sequence[Any]) -> bool:
    """Whether ``config`` asks for a tiered start of a call with these inputs
    (its own ``tiered_start``, else the default: NOTE: [where a tiered start
    is the default]); the call may still start cold (:func:`tiered_off`)."""
    asked = config.tiered_start
    return asked is True or (asked is None and not default_off(example_inputs))


def default_off(example_inputs: Sequence[Any]) -> str:
    """Why a config that leaves ``tiered_start`` unset does not start tiered
    for this graph ("" when it does: NOTE: [where a tiered start is the
    default])."""
    if os.environ.get(DEFAULT_ENV, "").strip() == "0":
        return f"${DEFAULT_ENV}=0"
    devices = {v.device.type for v in example_inputs if isinstance(v, torch.Tensor)}
    devices -= {"cpu"}
    if devices:
        return f"the graph runs on {', '.join(sorted(devices))}"
    return ""


class DeferredSource(ArtifactSource):
    """The serving process's artifact source in a tiered start: what the cache
    holds loads as always; what it lacks runs as the piece's GraphModule and
    is named in ``deferred``, for the compile workers."""

    def __init__(self, *args: Any, probes: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Whether the build forks the ISA probe (a cold forked tier on the CPU).
        self.probes = probes
        self.deferred_keys: set[str] = set()
        # Each deferred piece's compile key: repeated pieces share one, and one worker
        # compiles it (the others of the key are "shared" there).
        self.key_of: dict[str, str] = {}

    def begin_build(self) -> None:
        """A cold forked tier's build forks the ISA probe as it begins (NOTE:
        [a forked tier probes as its build begins], forked_workers.py)."""
        if self.probes:
            from .forked_workers import fork_probe

            pid = fork_probe(niceness())
            if pid is not None:
                controller().watch(pid)  # NOTE: [serving first]

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
    if off is None and cold and worker_start == "spawn":
        # Spawned workers load torch and Inductor beside the split instead.
        spawned_pool.start(cpu=on_cpu(example_inputs))
        if spawned_pool.cannot_start is not None:
            off = "off"  # NOTE: [a process that cannot start compile workers]
    if off is not None and cold:
        # A cold start: the warm-up runs beside the split and fake propagation.
        adapter.warm_up(cpu=on_cpu(example_inputs))
    if off is not None:
        return ArtifactSource(config, cache, adapter=adapter, note_guards=note_guards)
    return DeferredSource(
        config,
        cache,
        adapter=adapter,
        note_guards=note_guards,
        probes=cold and worker_start == "fork" and on_cpu(example_inputs),
    )
