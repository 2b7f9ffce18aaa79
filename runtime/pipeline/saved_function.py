"""``StitchFunction``: the stitched function as torch's AOT compile saves it, a reference to its cache entry.

NOTE: [what a saved Stitch function holds]
``torch.compile(...).aot_compile(...)`` saves what the backend returned through
the ``SerializableCallable`` protocol (``serialize_compile_artifacts`` /
``deserialize_compile_artifacts``).  Everything a Stitch function runs is in its
cache entry already: the index, the emitted source and the piece artifacts
(with their prebuilt records).  So the saved bytes are a small literal naming
the entry (and the sha256 of its index, so a rewritten entry is noticed), the
constants the emitted source reads, and what the pieces' shape targets were
planned with, never a second copy.  Loading rebuilds each piece's runnables
from the index (prebuilt: no Inductor) and binds the emitted source to them,
with no graph, no split and no fake tensors.  A function that runs CUDA graphs
also saves its graph plan and CUDA graph settings (see NOTE: [a saved function
rebuilds its graphs from a plan] in ``cudagraph/graph_plan.py``): the loading process
wraps its pieces in the same padded runner and per-size graph tables, and
captures its own graphs.

This module imports neither Dynamo nor Inductor: ``StitchFunction`` is
registered as a ``SerializableCallable`` only once a backend call (inside
Dynamo) hands one out.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from stitch.core.errors import StitchCacheError, StitchError, StitchRuntimeError

from ..compat import dynamo
from ..compat.guard_codec import readable
from ..config import CompilationConfig
from ..cudagraph import CUDAGraphManager
from ..cudagraph.graph_plan import GraphPlan
from ..store.cache import CompileCache
from .artifact_source import ArtifactSource
from .materialize import CompiledPlan, materialize
from .saved_reference import (
    GRAPH_FIELDS,
    WHERE,
    checked,
    decode_const,
    index_sha256,
    make_reference,
    parse_reference,
    reference_entry,
    reference_location,
    render_reference,
)

log = logging.getLogger("stitch")


class StitchFunction:
    """The stitched function, saveable by reference to its cache entry.

    ``fn`` is what runs (the emitted ``execution_fn`` bound to its pieces);
    ``reference`` is the literal that :meth:`serialize_compile_artifacts` saves,
    or None with the reason it cannot be saved in ``unsaveable``.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        reference: dict[str, Any] | None,
        unsaveable: str = "",
    ) -> None:
        self.fn = fn
        self.reference = reference
        self.unsaveable = unsaveable
        # The tiered start whose pieces still compile into the entry (NOTE: [a
        # tiered start] in tiered/tier.py); None: the entry was complete.
        self.tier: Any = None

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    @classmethod
    def serialize_compile_artifacts(cls, fn: StitchFunction) -> bytes:
        if fn.reference is None:
            raise StitchRuntimeError(
                f"this Stitch function cannot be saved: {fn.unsaveable}"
            )
        reference = dict(fn.reference)
        if fn.tier is not None and not fn.tier.settled:
            # Saved before the workers finished (vLLM saves what the backend
            # returns at once): the index changes as pieces land, so it is not
            # pinned.  A load checks that every piece is there, and each
            # artifact's identity; an entry left incomplete raises.
            reference["index_sha256"] = None
        else:
            reference["index_sha256"] = index_sha256(reference_entry(reference))
        return render_reference(reference).encode("utf-8")

    @classmethod
    def deserialize_compile_artifacts(cls, data: bytes) -> StitchFunction:
        reference = parse_reference(data.decode("utf-8"))
        return cls(load_reference(reference, *_LOADING.get()), reference)

    @property
    def co_name(self) -> str:
        # Dynamo's debugging helpers (depyf) name a compiled function by co_name.
        return "stitch_execution_fn"


def saveable(
    fn: Callable[..., Any],
    config: CompilationConfig,
    entry_dir: str | None,
    consts: Sequence[Any],
    graphs: GraphPlan | None,
    guards: Sequence[str] = (),
) -> StitchFunction:
    """``fn`` as a :class:`StitchFunction` (saveable unless something rules it out);
    ``graphs``: the plan of the CUDA graphs ``fn`` runs (None: none); ``guards``:
    what its compile specialized on, which a saved forward would not check."""
    dynamo.register_serializable(StitchFunction)
    why = ""
    if not ArtifactSource.saves(config.backend):
        why = f"the {config.backend} backend saves no artifacts"
    elif entry_dir is None and config.disable_cache:
        why = "the cache is disabled (disable_cache=True)"
    elif entry_dir is None:
        why = "its cache entry could not be written (the cache warning above says why)"
    elif guards:
        why = f"its compile specialized the graph ({', '.join(map(readable, guards))})"
    if why:
        return StitchFunction(fn, None, why)
    try:
        return StitchFunction(fn, make_reference(config, entry_dir, consts, graphs))
    except StitchRuntimeError as exc:
        return StitchFunction(fn, None, str(exc))


def in_torch_aot_compile() -> bool:
    """Whether the backend is being called by ``torch.compile(...).aot_compile``
    (see NOTE: [detecting torch's aot_compile] in ``compat/dynamo.py``)."""
    return dynamo.in_aot_compile()


# The cache root a reference resolves against, and the CUDA graph manager its
# graphs join, while torch's loader, which takes no arguments for them,
# deserializes a StitchFunction (see reference_root).
_LOADING: contextvars.ContextVar[tuple[str | None, CUDAGraphManager | None]] = (
    contextvars.ContextVar("stitch_loading", default=(None, None))
)


@contextlib.contextmanager
def reference_root(
    root: str, cudagraphs: CUDAGraphManager | None = None
) -> Iterator[None]:
    """Resolve saved references against ``root`` (and build their CUDA graphs
    with ``cudagraphs``) inside the block."""
    token = _LOADING.set((root, cudagraphs))
    try:
        yield
    finally:
        _LOADING.reset(token)


# -- loading an entry without a graph ----------------------------------------------------


def load_reference(
    reference: dict[str, Any],
    root: str | None = None,
    cudagraphs: CUDAGraphManager | None = None,
    config_hash: str | None = None,
) -> Callable[..., Any]:
    """The stitched function of a saved reference (no graph, no split, no compile).

    A reference that runs CUDA graphs builds them with ``cudagraphs`` (whose
    config's run-time settings apply), else with a manager of its own.  With
    ``config_hash``, an entry compiled under another config is refused.
    """
    record = checked(reference)
    for module in record.imports:
        importlib.import_module(module)
    root, entry_dir = reference_location(record, root)
    if (
        record.index_sha256 is not None
        and index_sha256(entry_dir) != record.index_sha256
    ):
        raise StitchCacheError(
            f"cache entry {entry_dir} was rewritten since it was saved"
        )
    if not ArtifactSource.saves(record.backend):
        raise StitchCacheError(f"backend {record.backend!r} saves no artifacts")
    plan = None
    settings: dict[str, Any] = {}
    if record.cudagraphs is not None:
        plan = GraphPlan.from_record(record.cudagraphs.plan, WHERE)
        settings = {
            k: v for k, v in record.cudagraphs.config.items() if k in GRAPH_FIELDS
        }
    try:
        config = CompilationConfig(**record.targets, **settings)
    except (StitchError, TypeError) as exc:
        raise StitchCacheError(f"a saved Stitch function's config: {exc}") from None
    consts = [decode_const(dict(c)) for c in record.consts]
    if plan is not None and cudagraphs is None:
        cudagraphs = CUDAGraphManager(config.cudagraphs)
    return load_entry(root, entry_dir, config, consts, plan, cudagraphs, config_hash)


def load_entry(
    root: str,
    entry_dir: str,
    config: CompilationConfig,
    consts: Sequence[Any],
    plan: GraphPlan | None = None,
    cudagraphs: CUDAGraphManager | None = None,
    config_hash: str | None = None,
) -> Callable[..., Any]:
    start = time.perf_counter()
    # NOTE: [a broken entry is reported once, by the run that rebuilds it]
    # A saved forward that cannot load raises, and its caller says so (vLLM's
    # "Compiling model again due to a load failure", with this error as the
    # reason), then compiles; that compile meets the same broken file and warns
    # that it rebuilds it.  So the load itself warns about nothing: the
    # faults it meets go into its error.
    cache = CompileCache.existing(root, entry_dir, quiet=True)
    index = cache.index
    if index is None or index.source is None:
        raise StitchCacheError(f"cache entry {entry_dir} records no stitching source")
    if config_hash is not None and index.identity.config_hash != config_hash:
        raise StitchCacheError(
            f"cache entry {entry_dir} was compiled under another Stitch config "
            f"(config hash {index.identity.config_hash[:12]}, this one's "
            f"{config_hash[:12]})"
        )
    names = list(index.source.submod_names)
    code = cache.read_source(names, index.source.dispatch_on)
    if code is None:
        raise StitchCacheError(
            f"cache entry {entry_dir}: the stitching source is unusable"
        )
    if any(n not in index.pieces for n in names):
        raise StitchCacheError(f"cache entry {entry_dir}: pieces and source disagree")
    if plan is not None and (
        cudagraphs is None or not cudagraphs.applies_to_plan(plan)
    ):
        if cudagraphs is not None:
            log.info(
                "stitch: %s runs without CUDA graphs here (cudagraph_mode=%s, graph "
                "ops %s)",
                entry_dir,
                cudagraphs.settings.cudagraph_mode.name,
                type(cudagraphs.ops).__name__,
            )
        plan = None
    # NOTE: [one plan for cold, warm and saved starts] (materialize.py)
    pieces = {n: index.pieces[n] for n in names}
    compiled = CompiledPlan(
        code, cache.source_path(), tuple(names), pieces, consts, plan
    )
    source = ArtifactSource(config, cache)
    fn = materialize(compiled, config, source.runnable, cudagraphs=cudagraphs)[0]
    log.info(
        "stitch: graph %s: %d compiled pieces (%d unique), warm start from the "
        "saved forward in %.2fs, cache %s",
        index.identity.graph_key[:12],
        len(names),
        len({tuple(e.key for e in p.entries) for p in pieces.values()}),
        time.perf_counter() - start,
        cache.directory,
    )
    return fn
