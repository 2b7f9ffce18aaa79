"""The backend a vLLM engine names, and the saved function its AOT loader finalizes.

NOTE: [vLLM's AOT protocol]
With ``VLLM_USE_AOT_COMPILE`` (the default on torch >= 2.10) vLLM compiles a
model through ``torch.compile(...).aot_compile`` and saves the result; a later
engine process loads it with ``torch.compiler.load_compiled_function`` and then
calls ``compiled_fn.finalize_loading(vllm_config)`` on what the backend
returned (``vllm/compilation/decorators.py``).  Anything either step raises
makes vLLM log one warning ("Compiling model again due to a load failure ...")
and compile as if the file were absent.  So :class:`VllmStitchFunction`
deserializes only the reference to the Stitch cache entry and loads the entry
in ``finalize_loading``: a stale, rewritten or missing entry raises a
``StitchCacheError`` there, which vLLM turns into a recompile, and no forward
ever runs a half-loaded function.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from stitch.codegen.fingerprint import example_value
from stitch.core.errors import StitchCacheError, StitchConfigError

from ..compat.dynamo import register_serializable
from ..pipeline.api import (
    StitchBackend,
    StitchFunction,
    load_reference,
    parse_reference,
    start_inductor_warmup,
)
from ..pipeline.tiered.controls import allow_parents_cpus, pool_for
from ..store.digests import content_hash
from ..workers.spawned_pool import SpawnedPool
from .config_from_vllm import (
    env_fields,
    stitch_cache_root,
    stitch_config,
    vllm_splitting_ops,
)
from .logs import join_vllm_logging

log = logging.getLogger("stitch")


class VllmStitchFunction(StitchFunction):
    """A :class:`StitchFunction` that also speaks vLLM's loader protocol."""

    @classmethod
    def deserialize_compile_artifacts(cls, data: bytes) -> VllmStitchFunction:
        # The entry is loaded by finalize_loading (see NOTE: [vLLM's AOT protocol]).
        return cls(None, parse_reference(data.decode("utf-8")))  # type: ignore[arg-type]

    def finalize_loading(self, vllm_config: Any = None) -> None:
        """Load the saved cache entry (no graph, no split, no compile); idempotent."""
        if self.fn is not None:
            return
        join_vllm_logging()
        if self.reference is None:
            raise StitchCacheError("a saved Stitch function holds no reference")
        # The root this process would compile into: vLLM's cache root may have
        # moved since the entry was saved, and the reference names its entry
        # relative to the root.
        root = env_fields().get("cache_dir") or stitch_cache_root()
        # NOTE: [a saved forward is checked against this engine's Stitch config]
        # vLLM keys its saved forward by its own config, which holds the
        # backend's name but not $STITCH_VLLM_CONFIG: after the user changes
        # that (compile_sizes, say), vLLM would load the forward compiled under
        # the old fields.  The entry's index records the Stitch config's hash;
        # one that differs from the config this engine would compile with is
        # refused here, and vLLM compiles again (one warning).
        expected = None
        if vllm_config is not None:
            fields = named_backend_fields(vllm_config)
            expected = stitch_config(vllm_config, fields).compute_hash()
        self.fn = load_reference(self.reference, root, config_hash=expected)
        # NOTE: [a warm engine still meets Inductor]
        # The loaded pieces need no Inductor, but vLLM compiles small helpers of
        # its own with Inductor on the first request (the logprobs rank count,
        # the top-k/top-p sampler).  Without this, that request pays the
        # Inductor imports and the CPU ISA probe a cold start pays while it
        # splits the graph (about a second here); started now, the probe runs
        # beside the rest of the engine's start (KV cache, profile run).  On a
        # GPU those helpers are Triton kernels: no probe (see NOTE: [Inductor
        # warm-up overlaps the split]).
        start_inductor_warmup(cpu=_device_type(vllm_config) == "cpu")

    def __call__(self, *args: Any) -> Any:
        if self.fn is None:
            # Loaded by torch without vLLM's loader: finalize on first use.
            self.finalize_loading()
        return self.fn(*args)


# NOTE: [the engine's ISA probe starts with its backend]
# Inductor probes the CPU's vector ISA once per process, in fresh interpreters
# (NOTE: [Inductor warm-up overlaps the split]).  A tiered start's backend call
# does not compile, so nothing probed in vLLM's worker before its forked
# compile worker did, for its first piece, and vLLM's first request did again,
# for its sampler's Inductor kernels.  The backend is made while vLLM loads the
# model, before Dynamo traces; the probe starts then, on cores the engine's
# OpenMP threads do not compute on (NOTE: [the cores a compile worker runs
# on]), and a worker forked after it ends inherits its answer.  On 2 cores the
# tiered engine's last swap came 25.3 s into its backend call rather than
# 34.5, its first request took 5.9 s rather than 8.9, and a cold engine's
# backend call 15.8 s rather than 21.4 (docs/performance.md, "vLLM's engine").
class StitchVllmBackend:
    """The callable a vLLM ``compilation_config`` names as its backend.

    Each call builds a Stitch :class:`CompilationConfig` from the engine's
    config (see ``config_from_vllm.py``) and compiles through a fresh
    :class:`StitchBackend`.  ``fields`` are ``CompilationConfig`` fields that
    win over vLLM's defaults and ``$STITCH_VLLM_CONFIG``.

    NOTE: [the engine's config is taken when vLLM resolves the name]
    vLLM resolves the backend's name while it builds the model, under
    ``set_current_vllm_config``, but calls the backend from the first forward,
    where no config is current.  So the package hands out a new backend per
    lookup (``stitch.runtime.vllm.__getattr__``), holding the config current at
    that moment; a config current at call time wins.

    NOTE: [one pool of compile workers per vLLM process]
    So every graph an engine compiles comes through a backend of its own, and
    a pool of spawned compile workers per backend would start its processes
    again for each graph (NOTE: [pre-started compile workers]).  The process
    keeps one pool (:meth:`pool`), made and, where its workers will be
    spawned, started by the first backend built, which vLLM does when it
    resolves the name while the engine begins to load; every backend call of
    the process shares it.
    """

    _pool: SpawnedPool | None = None
    _pool_lock = threading.Lock()

    def __init__(self, vllm_config: Any = None, **fields: Any) -> None:
        # A backend_with() object is built when vLLM's worker first imports the
        # user's module, which is while vLLM resolves the backend's name, under
        # set_current_vllm_config: that config is the engine's.
        self.vllm_config = vllm_config if vllm_config is not None else _current()
        self.fields = fields
        join_vllm_logging()
        if self.vllm_config is not None:
            self.pool(stitch_config(self.vllm_config, fields))
            if _device_type(self.vllm_config) == "cpu":
                # vLLM's CPU worker pins itself to its OpenMP cores (NOTE:
                # [the cores a compile worker runs on]): the engine's are free.
                allow_parents_cpus()
                # NOTE: [the engine's ISA probe starts with its backend]
                start_inductor_warmup(cpu=True)

    @classmethod
    def pool(cls, config: Any) -> SpawnedPool:
        """This process's pool of spawned compile workers (NOTE: [one pool of
        compile workers per vLLM process]), made for ``config`` the first time."""
        with cls._pool_lock:
            if cls._pool is None:
                cls._pool = pool_for(config)
            return cls._pool

    def __call__(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any]
    ) -> Callable[..., Any]:
        vllm_config = current_vllm_config() or self.vllm_config
        if vllm_config is None:
            raise StitchConfigError(
                "stitch.runtime.vllm.backend was called with no vLLM config: name it "
                "in LLM(compilation_config={'mode': 2, 'backend': "
                "'stitch.runtime.vllm.backend'}), or build it inside "
                "set_current_vllm_config(...)"
            )
        join_vllm_logging()
        config = stitch_config(vllm_config, self.fields)
        stitch = StitchBackend(
            config,
            quiet_splitting_ops=vllm_splitting_ops(vllm_config),
            cache_group=cache_group(vllm_config, gm),
            spawned_pool=self.pool(config),
        )
        fn = stitch(gm, example_inputs)
        if isinstance(fn, StitchFunction):
            register_serializable(VllmStitchFunction)
            saved = VllmStitchFunction(fn.fn, fn.reference, fn.unsaveable)
            # NOTE: [a tiered start]: vLLM saves this at once; the reference
            # then does not pin the index the workers are still writing.
            saved.tier = fn.tier
            return saved
        return fn


def named_backend_fields(vllm_config: Any) -> dict[str, Any]:
    """The fields of the :func:`backend_with` object the engine's config names by
    its qualified name ({} for the package's own ``backend`` or a torch name)."""
    name = getattr(getattr(vllm_config, "compilation_config", None), "backend", "")
    module, _, attribute = str(name or "").rpartition(".")
    if not module or module == __package__:
        return {}
    try:
        found = getattr(importlib.import_module(module), attribute, None)
    except ImportError:
        return {}
    return dict(found.fields) if isinstance(found, StitchVllmBackend) else {}


def cache_group(vllm_config: Any, gm: fx.GraphModule) -> str:
    """What every rank of this engine shares for this graph (NOTE: [ranks of one
    engine share a folder] in store/location.py): vLLM's config hash (the
    model, its parallel sizes, the compile settings; the rank is not in it, as
    vLLM's own compile cache is shared the same way) and the graph's inputs by
    name (one engine may compile several modules)."""
    compute_hash = getattr(vllm_config, "compute_hash", None)
    if compute_hash is None:
        return ""
    names = [
        n.name
        for n in gm.graph.nodes
        if n.op == "placeholder" and not isinstance(example_value(n), torch.SymInt)
    ]
    text = f"vllm {compute_hash()} {names}"
    return content_hash(text.encode())


def _device_type(vllm_config: Any) -> str:
    """The engine's device type ("cpu" where its config does not say)."""
    return getattr(getattr(vllm_config, "device_config", None), "device_type", "cpu")


def _current() -> Any:
    try:
        return current_vllm_config()
    except ImportError:  # built where vLLM is not installed: no engine config
        return None


def current_vllm_config() -> Any:
    """The engine config vLLM has set in this process, else None."""
    from vllm.config import get_current_vllm_config_or_none

    return get_current_vllm_config_or_none()


def backend_with(**fields: Any) -> StitchVllmBackend:
    """A backend with these ``CompilationConfig`` fields; keep it at module level of
    a module vLLM's workers import and name it by its qualified name."""
    return StitchVllmBackend(**fields)
