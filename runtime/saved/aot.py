"""``aot_compile``: compile a model once; every later process loads it without Dynamo.

NOTE: [warm start without Dynamo]
A warm Dynamo-entered start still traces the whole model in every process
(seconds per layer stack), and every forward passes Dynamo's guards.
``aot_compile(model, example_inputs, config)`` compiles through
``torch.compile(...).aot_compile`` once and saves, beside Stitch's cache entry:

- the forward Dynamo produced (its transformed bytecode, which gathers the
  parameters, calls the stitched function and builds the result), marshalled;
- a reference to the Stitch cache entry the stitched function runs (see
  ``saved_function.py``), never a copy of it;
- torch's own save of the compiled function (with its guards), for debugging;
- what the save is valid for: torch, Python and Stitch versions, the config
  hash, the inputs' dtypes, ranks and dynamic dims, and the source files Dynamo
  traced.

A later process with the same model and config finds that record by the model's
class and structure, checks it, and rebuilds the forward as a plain Python
function bound to the model: no Dynamo import, no tracing, no fake tensors, no
Inductor (pieces load prebuilt), and no guard evaluation per forward.  When the
record is stale (another torch, edited model code, another config, other input
dtypes or ranks) one warning says why and the model is compiled again.

Guards are the debugging switch: ``guards=True`` (or ``STITCH_AOT_GUARDS=1``)
loads torch's saved function instead and checks Dynamo's guards on every call,
raising with the failed guard when an input no longer fits.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from stitch.core.errors import (
    StitchArgumentError,
    StitchCacheError,
    StitchConfigError,
)

from ..config import CompilationConfig
from ..cudagraph import CUDAGraphManager
from ..pipeline.api import StitchBackend
from ..store.shared.lease import INSTALLED, Lease, end_turn, wait_turn
from ..store.shared.units import saved_forward_unit
from .arguments import call_args, dims_by_position, size_names
from .checked_forward import after_compile, after_load
from .forward_store import SavedForwardStore
from .record import StaleRecord, dynamic_spec, model_name

log = logging.getLogger("stitch")

GUARDS_ENV = "STITCH_AOT_GUARDS"


@dataclasses.dataclass
class AOTCompiledModel:
    """What :func:`aot_compile` returns: call it as you would call the model.

    ``forward`` is what a serving loop calls (bound to the model: no Dynamo frame
    and, unless ``guards``, no guard check).  ``warm`` says it was loaded from a
    saved record without tracing; ``seconds`` what getting it took; ``path`` the
    record's folder (None when nothing was saved).
    """

    forward: Callable[..., Any]
    warm: bool
    guards: bool
    seconds: float
    path: str | None
    # The Stitch cache entry the forward runs (None: not cached).
    cache_entry: str | None = None
    # The backend that compiled it in this process (None when loaded warm).
    backend: StitchBackend | None = None
    # The CUDA graphs of the forward: start-up capture (capture_sizes) and the
    # capture switch.  Unused when the forward runs no graphs.
    cudagraphs: CUDAGraphManager | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.forward(*args, **kwargs)
        except TypeError as exc:
            # Raised binding the arguments, before the forward's frame began.
            if exc.__traceback__ is None or exc.__traceback__.tb_next is not None:
                raise
            raise StitchArgumentError(not_bound(self.forward, exc)) from None


def not_bound(forward: Callable[..., Any], exc: TypeError) -> str:
    """What a call that ``forward``'s parameters do not bind is told: the
    forward, its parameters as compiled, and Python's own reason."""
    owner = getattr(forward, "__self__", None)
    name = f"{type(owner).__name__}.forward" if owner is not None else "the forward"
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return f"{name} (saved by aot_compile): {exc}"
    shown, star = [], False
    for p in params:
        if p.name.startswith("__stitch"):
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            shown.append("*")
        star = star or p.kind in (p.KEYWORD_ONLY, p.VAR_POSITIONAL)
        shown.append(str(p))
    reason = str(exc).split("() ", 1)[-1]
    return (
        f"{name} (saved by aot_compile) takes ({', '.join(shown)}), the arguments "
        f"it was compiled with: {reason}"
    )


def aot_compile(
    model: torch.nn.Module,
    example_inputs: Sequence[Any] = (),
    config: CompilationConfig | None = None,
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    dynamic_dims: Mapping[int | str, Sequence[int] | Mapping[int, str]] | None = None,
    guards: bool | None = None,
    cudagraphs: CUDAGraphManager | None = None,
    backend: StitchBackend | None = None,
) -> AOTCompiledModel:
    """Compile ``model.forward`` with Stitch ahead of time, or load it as compiled before.

    ``example_inputs`` are the forward's positional arguments, ``example_kwargs``
    its keyword arguments (a transformers decode step:
    ``{"input_ids": ids, "past_key_values": static_cache, "use_cache": True}``);
    the saved forward is called the same way.  An object argument (the cache)
    is checked by the tensors the forward reads from it, and those it writes
    are never copied (NOTE: [the tensors of an object argument] in
    ``arguments.py``).
    ``dynamic_dims`` maps an input's position, or a keyword argument's name, to
    its dimensions that vary (the token count): they are marked
    ``mark_unbacked`` (one graph for every size, 1 included) only when the
    model is compiled, since marking imports Dynamo.  Dims given as
    ``{dim: name}`` instead of a list are one size per name, equal in every
    call (``{"input_ids": {0: "tokens"}, "position_ids": {0: "tokens"}}``:
    NOTE: [one size for dims of one name] in ``arguments.py``).
    Dimensions marked on the inputs beforehand count too.  The model is
    compiled for inference (under ``torch.no_grad()``); forward hooks do not
    run.  ``guards`` (default: ``$STITCH_AOT_GUARDS``) checks Dynamo's guards on
    every call, for debugging.  ``cudagraphs`` is the :class:`CUDAGraphManager`
    the forward's CUDA graphs use (default: a new one for ``config``); a saved
    forward runs the graphs it was compiled with, captured in this process.
    ``backend``: the :class:`StitchBackend` that compiles (its ``compiled``
    list reports it; its config and CUDA graphs are the ones used); default: a
    new one for ``config``.
    """
    start = time.perf_counter()
    config, cudagraphs, guards = _settled(config, cudagraphs, guards, backend)
    # NOTE: [one owner of the config in saved/] (forward_store.py)
    args = call_args(model, tuple(example_inputs), example_kwargs)
    requested = dims_by_position(args, dynamic_dims)
    dims = dynamic_spec(args, requested)
    store = SavedForwardStore(
        model, config, cudagraphs, guards, backend, size_names(args, requested)
    )
    now = store.factors(args, dims)
    shared = turn = None
    if store.folder is not None:
        found, shared, turn = _load_or_lease(store, now, start)
        if found is not None:
            return found
    return _compile(store, args, dims, now, shared, turn, start)


def _settled(
    config: CompilationConfig | None,
    cudagraphs: CUDAGraphManager | None,
    guards: bool | None,
    backend: StitchBackend | None,
) -> tuple[CompilationConfig, CUDAGraphManager, bool]:
    """The config, CUDA graphs and guards switch :func:`aot_compile` runs with:
    the backend's when one is given, else the arguments', else the defaults.
    Its own backend leaves a tiered start off unless the config asks for one
    (NOTE: [where a tiered start is the default]: the saved forward would be
    written only after forwards that swap every piece in)."""
    if backend is not None:
        if (config is not None and config is not backend.config) or (
            cudagraphs is not None and cudagraphs is not backend.cudagraphs
        ):
            raise StitchConfigError(
                "aot_compile: a backend brings its config and CUDA graphs; "
                "give the backend alone"
            )
        config, cudagraphs = backend.config, backend.cudagraphs
    config = config if config is not None else CompilationConfig()
    if backend is None and config.tiered_start is None:
        config = dataclasses.replace(config, tiered_start=False)
    if guards is None:
        guards = os.environ.get(GUARDS_ENV, "") not in ("", "0")
    if cudagraphs is None:
        cudagraphs = CUDAGraphManager(config.cudagraphs)
    return config, cudagraphs, guards


def _load_or_lease(
    store: SavedForwardStore, now: dict[str, Any], start: float
) -> tuple[AOTCompiledModel | None, Any, Any]:
    """The saved forward, from the local cache or installed from the fleet's
    cache; else the fleet's cache and this process's turn to compile (None,
    None: no fleet's cache)."""
    found = _load_saved(store, now, start)
    shared = store.fleet_cache() if found is None else None
    turn: Any = None
    if shared is not None:
        # NOTE: [the fleet's cache never stops a run] (store/shared/fleet_cache.py)
        unit = saved_forward_unit(store.root, store.folder, now)
        turn = wait_turn(shared, store.root, unit)
        if turn == INSTALLED:
            found = _load_saved(store, now, start)
            turn = Lease(unit, held=False)  # unusable here: compiled, republished
    return found, shared, turn


def _compile(
    store: SavedForwardStore,
    args: Sequence[Any],
    dims: Sequence[Sequence[int]],
    now: dict[str, Any],
    shared: Any,
    turn: Any,
    start: float,
) -> AOTCompiledModel:
    """Compile and save the first signature's forward, behind its input check,
    and publish it to the fleet's cache when this process holds the turn."""
    compiled = False
    pieces_tier = None
    try:
        forward, saved, backend = store.compile_and_save(
            args, dims, store.folder, now, first=True
        )
        if not store.guards:
            forward = after_compile(
                store, forward, saved, args, dims, backend.graph_inputs
            )
        compiled = True
        pieces_tier = backend.compiled[-1].tier if backend.compiled else None
    finally:
        if shared is not None and isinstance(turn, Lease):
            if pieces_tier is None:
                end_turn(shared, store.root, turn, compiled)
            else:
                _publish_when_compiled(pieces_tier, shared, store.root, turn)
    entry = backend.compiled[-1].cache_dir if backend.compiled else None
    seconds = time.perf_counter() - start
    return AOTCompiledModel(
        forward, False, store.guards, seconds, saved, entry, backend, store.cudagraphs
    )


def _publish_when_compiled(pieces: Any, shared: Any, root: str, turn: Lease) -> None:
    """A tiered start (NOTE: [a tiered start]): the saved forward is written
    once every piece is swapped in (saved/compile.py), and published then,
    off the serving thread; nothing is published if a piece stays uncompiled."""

    def publish(ok: bool) -> None:
        threading.Thread(
            target=end_turn,
            args=(shared, root, turn, ok),
            name="stitch-aot-publish",
            daemon=False,  # NOTE: [the last swap's work is not cut off at exit]
        ).start()

    pieces.when_complete(publish)


def _load_saved(
    store: SavedForwardStore, now: dict[str, Any], start: float
) -> AOTCompiledModel | None:
    """The saved forward in the store's folder, if it is there and fits ``now``
    (else one warning saying why, when it is there)."""
    model, folder = store.model, store.folder
    assert folder is not None
    try:
        loaded = store.load(folder, now)
        if loaded is not None and not store.guards:  # NOTE in input_mismatch.py
            loaded = (after_load(store, loaded[0], folder), loaded[1])
    # read_record checked every field loading reads (aot_record.check_record):
    # a KeyError or TypeError here is a bug, and is raised as one.
    except (StaleRecord, StitchCacheError, OSError, ValueError) as exc:
        log.warning(
            "stitch aot: the saved %s is %s (%s); compiling it again",
            model_name(model),
            "stale" if isinstance(exc, StaleRecord) else "unusable",
            exc,
        )
        return None
    if loaded is None:
        return None
    forward, entry = loaded
    seconds = time.perf_counter() - start
    log.info("stitch aot: %s loaded in %.2fs", model_name(model), seconds)
    return AOTCompiledModel(
        forward, True, store.guards, seconds, folder, entry, None, store.cudagraphs
    )
