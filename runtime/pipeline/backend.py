"""``StitchBackend``: the torch.compile backend (split, compile pieces, stitch)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch.fx as fx

from stitch.core import StitchRuntimeError

from ..compat.versions import check_supported
from ..config import CompilationConfig
from ..cudagraph import CUDAGraphManager
from ..profiling import Profiler
from ..workers.spawned_pool import SpawnedPool
from .compilation import Compilation, CompiledModel
from .graph_inputs import GraphInput, graph_inputs
from .saved_function import in_torch_aot_compile, saveable
from .split_policy import SplitPolicy
from .tiered.dynamo_first import DynamoFirst
from .tiered.pool_choice import pool_for

__all__ = ["CompiledModel", "StitchBackend", "stitch_backend"]


class StitchBackend:
    """A torch.compile backend: ``torch.compile(model, backend=StitchBackend(cfg))``.

    Each call splits Dynamo's graph at the splitting ops, compiles every other
    piece (once per unique piece and shape target), and returns the emitted
    stitching function bound to the compiled pieces.

    Collaborators come in here: ``cudagraphs`` (the manager whose pool and
    capture every graph compiled here shares; one of its own by default),
    ``quiet_splitting_ops`` (splitting ops that may match nothing without a
    warning: an engine's own list), ``profiler``, ``cache_group`` and
    ``spawned_pool`` (a tiered start's spawned compile workers).
    """

    def __init__(
        self,
        config: CompilationConfig | None = None,
        *,
        serializable: bool | None = None,
        cudagraphs: CUDAGraphManager | None = None,
        profiler: Profiler | None = None,
        quiet_splitting_ops: Iterable[str] = (),
        cache_group: str = "",
        spawned_pool: SpawnedPool | None = None,
        **fields: Any,
    ) -> None:
        if config is not None and fields:
            raise StitchRuntimeError("pass a CompilationConfig or fields, not both")
        self.config = config if config is not None else CompilationConfig(**fields)
        check_supported()  # one warning outside the tested torch releases
        # Return a StitchFunction (saveable by torch's aot_compile): always (True),
        # never (False), or when torch.compile(...).aot_compile calls (None).
        self.serializable = serializable
        # Each call's result, in the order they finished; builds still under
        # way apart (NOTE: [Dynamo's graph serves while the stitching is built]).
        self._compiled: list[CompiledModel] = []
        self._building: list[DynamoFirst] = []
        # Pool, capture switch and start-up capture of every graph compiled here.
        self.cudagraphs = cudagraphs or CUDAGraphManager(self.config.cudagraphs)
        # Where graphs are cut; its warnings are given once per backend.
        self.split_policy = SplitPolicy.from_config(self.config, quiet_splitting_ops)
        # What the ranks of one engine share (NOTE: [ranks of one engine share a
        # folder] in store/location.py); "": each graph's own folder.
        self.cache_group = cache_group
        # Set: every graph runs the profiling variant of its source (profiling.py).
        self.profiler = profiler
        # The inputs of the last graph (sizes, written or not): what a saved
        # forward's input check is made from (runtime/saved/input_mismatch.py).
        self.graph_inputs: list[GraphInput] = []
        # A tiered start's spawned compile workers, started now where they
        # will be needed and kept for every graph compiled here (NOTE:
        # [pre-started compile workers]); a pool may be shared between backends.
        self.spawned_pool = spawned_pool or pool_for(self.config)

    @property
    def compiled(self) -> list[CompiledModel]:
        """Each call's result, once every build under way has finished."""
        self._settle()
        return self._compiled

    def __call__(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any]
    ) -> Callable[..., Any]:
        self._settle()  # two calls never build at once
        self.graph_inputs = graph_inputs(gm, example_inputs)
        compilation = Compilation(
            self.config,
            gm,
            example_inputs,
            self.split_policy,
            cudagraphs=self.cudagraphs,
            profiler=self.profiler,
            cache_group=self.cache_group,
            spawned_pool=self.spawned_pool,
        )
        opened = compilation.open()
        saved = self.serializable or (
            self.serializable is None and in_torch_aot_compile()
        )
        if not saved and self._builds_apart(compilation, opened[2]):
            first = DynamoFirst(compilation, opened, self._compiled.append)
            self._building.append(first)
            return first
        compiled = compilation.finish(compilation.built(*opened))
        self._compiled.append(compiled)
        if saved:
            fn = saveable(
                compiled.fn,
                self.config,
                compiled.cache_dir,
                compiled.consts,
                compiled.graphs,
                compiled.guards,
            )
            fn.tier = compiled.tier
            return fn
        return compiled.fn

    def _builds_apart(self, compilation: Compilation, cache: Any) -> bool:
        """Whether Dynamo's graph serves while this call's stitching is built
        (NOTE: [Dynamo's graph serves while the stitching is built]): a cold
        entry of a tiered start, with no CUDA graphs and no profiler."""
        return (
            compilation.tiered_off is None
            and cache is not None
            and not cache.has_source()
            and self.profiler is None
            and not self.cudagraphs.applies_to(compilation.fakes)
        )

    def _settle(self) -> None:
        building, self._building = self._building, []
        for first in building:
            first.settle()

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Wait until every piece of this backend's tiered starts has landed in
        the cache or been given up (NOTE: [a tiered start]); whether all did
        within ``timeout`` seconds.  Each swaps in as it lands or at its next call
        (NOTE: [a landed piece swaps without its next call])."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for compiled in self.compiled:
            if compiled.tier is None:
                continue
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not compiled.tier.wait(left):
                return False
        return True


def stitch_backend(
    gm: fx.GraphModule, example_inputs: Sequence[Any]
) -> Callable[..., Any]:
    """The ``backend="stitch"`` entry point: a default :class:`CompilationConfig`."""
    return StitchBackend()(gm, example_inputs)
