"""The vLLM-style per-piece dispatch path: the baseline of bench/gpu_serving.py.

``VllmStyleManager`` is a :class:`CUDAGraphManager` whose piecewise sizes run
vLLM's way (NOTE: [the vLLM-style baseline]); give it to a backend::

    backend = StitchBackend(config, cudagraphs=VllmStyleManager(config))

It lives here, not in the runtime: nothing serves with it, the benchmark
measures what the hoisted dispatch saves against it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch.fx as fx

from stitch.core.errors import StitchRuntimeError
from stitch.runtime.config import CUDAGraphMode
from stitch.runtime.cudagraph import CUDAGraphManager, CUDAGraphWrapper, call_order
from stitch.runtime.cudagraph.graph_plan import GraphPlan


# NOTE: [the vLLM-style baseline]
# vLLM stitches the pieces with the split GraphModule's own forward; each piece
# is a wrapper that looks up a process-wide forward context for the batch
# descriptor, hashes it into its own table of graphs and replays (or calls the
# piecewise backend, which scans its compile ranges).  That path is rebuilt here,
# with the same padding in front, so the benchmark can measure what the hoisted
# dispatch saves.  VllmStyleManager selects it.
class BatchDescriptor(NamedTuple):
    num_tokens: int


@dataclasses.dataclass
class ForwardContext:
    batch_descriptor: BatchDescriptor | None
    cudagraph_runtime_mode: CUDAGraphMode


class ForwardContexts:
    """vLLM's ``set_forward_context`` / ``get_forward_context`` as an object."""

    def __init__(self) -> None:
        self._current: ForwardContext | None = None

    def get(self) -> ForwardContext:
        if self._current is None:
            raise StitchRuntimeError("a piece ran outside a forward context")
        return self._current

    @contextlib.contextmanager
    def set(
        self, descriptor: BatchDescriptor | None, mode: CUDAGraphMode
    ) -> Iterator[None]:
        previous = self._current
        self._current = ForwardContext(descriptor, mode)
        try:
            yield
        finally:
            self._current = previous


class VllmStyleCUDAGraphWrapper:
    """One piece: forward-context lookup, per-descriptor graph table, replay."""

    def __init__(
        self,
        runnable: Callable[..., Any],
        manager: CUDAGraphManager,
        contexts: ForwardContexts,
        *,
        piece: str,
        weak_output: bool,
    ) -> None:
        self.runnable = runnable
        self.manager = manager
        self.contexts = contexts
        self.piece = piece
        self.weak_output = weak_output
        self.entries: dict[BatchDescriptor, CUDAGraphWrapper] = {}

    def __call__(self, *args: Any) -> Any:
        context = self.contexts.get()
        descriptor = context.batch_descriptor
        if (
            context.cudagraph_runtime_mode is not CUDAGraphMode.PIECEWISE
            or descriptor is None
        ):
            return self.runnable(*args)
        entry = self.entries.get(descriptor)
        if entry is None:
            entry = self.entries[descriptor] = CUDAGraphWrapper(
                self.runnable,
                self.manager,
                piece=self.piece,
                size=descriptor.num_tokens,
                weak_output=self.weak_output,
            )
        return entry(*args)


class VllmStyleForward:
    """The split GraphModule's forward under a forward context (vLLM's model runner)."""

    def __init__(
        self,
        split_gm: fx.GraphModule,
        contexts: ForwardContexts,
        size_index: int,
        mode: CUDAGraphMode,
    ) -> None:
        self.split_gm = split_gm
        self.contexts = contexts
        self.size_index = size_index
        self.mode = mode

    def __call__(self, *args: Any) -> Any:
        descriptor = (
            BatchDescriptor(args[self.size_index])
            if self.mode is not CUDAGraphMode.NONE
            else None
        )
        with self.contexts.set(descriptor, self.mode):
            return self.split_gm(*args)


def vllm_style_forward(
    split_gm: fx.GraphModule,
    backends: dict[str, Any],
    manager: CUDAGraphManager,
    size_index: int,
    order: Sequence[str],
) -> tuple[VllmStyleForward, VllmStyleForward]:
    """``(with graphs, without graphs)`` forwards over a copy of ``split_gm``."""
    gm = copy.copy(split_gm)
    contexts = ForwardContexts()
    last = order[-1] if order else None
    for name, backend in backends.items():
        gm.__dict__[name] = VllmStyleCUDAGraphWrapper(
            backend, manager, contexts, piece=name, weak_output=name == last
        )
    return (
        VllmStyleForward(gm, contexts, size_index, CUDAGraphMode.PIECEWISE),
        VllmStyleForward(gm, contexts, size_index, CUDAGraphMode.NONE),
    )


class VllmStyleManager(CUDAGraphManager):
    """Piecewise sizes through vLLM's per-piece path (the split graph's forward).

    The split graph comes from :meth:`plan`, which the backend calls with it;
    a saved function (planned in another process) has none.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.split_gms: dict[int, fx.GraphModule] = {}

    def plan(self, *, split_gm: fx.GraphModule, **kwargs: Any) -> GraphPlan | None:
        plan = super().plan(split_gm=split_gm, **kwargs)
        if plan is not None:
            self.split_gms[id(plan)] = split_gm
        return plan

    def piecewise(
        self,
        plan: GraphPlan,
        *,
        backends: dict[str, Any],
        **_: Any,
    ) -> tuple[Callable[..., Any], Callable[..., Any]]:
        split_gm = self.split_gms.get(id(plan))
        if split_gm is None:
            raise StitchRuntimeError(
                "the vLLM-style path runs the split graph, which a saved function "
                "does not keep"
            )
        order = call_order(split_gm, backends)
        return vllm_style_forward(
            split_gm, backends, self, plan.padding.size_index, order
        )
