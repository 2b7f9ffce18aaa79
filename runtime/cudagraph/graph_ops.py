"""Capture and replay: real CUDA graphs, and a CPU emulation with the same contract."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..compat.pytree import tree_flatten, tree_map


def weak_ref_tensor(t: torch.Tensor) -> torch.Tensor:
    """A tensor viewing ``t``'s memory without owning it.

    NOTE: [weak-ref outputs]
    A captured graph's outputs live in the graph pool.  Holding them strongly
    would keep that memory out of the pool for good; a non-owning view lets the
    allocator hand the memory to later captures, while replays still write
    there.  This is what Inductor's cudagraph trees and vLLM do.
    """
    storage = t.untyped_storage()
    weak = torch._C._construct_storage_from_data_pointer(
        storage.data_ptr(), t.device, storage.nbytes()
    )
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        weak, t.storage_offset(), t.shape, t.stride()
    )


def weak_refs(value: Any) -> Any:
    return tree_map(
        lambda x: weak_ref_tensor(x) if isinstance(x, torch.Tensor) else x, value
    )


class CUDAGraphOps:
    """Capture and replay with ``torch.cuda``."""

    needs_cuda = True

    def __init__(self) -> None:
        self._stream: Any = None
        # One small graph per shared pool, kept: NOTE: [a pool outlives its graphs].
        self._anchors: list[Any] = []

    def new_pool(self, shared: bool = False) -> Any:
        """A private pool's id; ``shared``: the pool every graph of the manager
        is captured into, kept for the life of these ops."""
        pool = torch.cuda.graph_pool_handle()
        if shared:
            self._anchors.append(self._anchor(pool))
        return pool

    # NOTE: [a pool outlives its graphs]
    # The device's caching allocator and the pinned host allocator each count
    # a private pool's users: every graph captured into it holds one until it
    # is reset.  Once every graph of a pool is gone, its count is 0, and the
    # next capture into the same pool fails torch's internal assert
    # "use_count > 0" (CUDACachingAllocator.cpp, then CachingHostAllocator.h:
    # both seen on an H200 with torch 2.11, when a tiered start dropped every
    # graph of the function after a landing and captured again).  A MemPool
    # object would hold the device allocator's count only.  So the shared pool
    # gets one graph of its own at birth, which these ops keep: a one-element
    # fill captured like any other graph, its output weakly referenced so that
    # its 512 bytes go back into the pool at once.

    def _anchor(self, pool: Any) -> Any:
        def fill() -> Any:
            return torch.zeros(1, device="cuda")

        graph, _ = self.capture(fill, (), pool=pool, first=False, weak_output=True)
        return graph

    def _side_stream(self) -> Any:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def capture(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        *,
        pool: Any,
        first: bool,
        weak_output: bool,
    ) -> tuple[Any, Any]:
        # NOTE: [gc and empty_cache only before the first capture]
        # torch.cuda.graph() runs gc.collect() and empty_cache() on every entry;
        # over hundreds of captures that costs seconds and hands the pool's
        # reserved blocks back to the driver.  capture_begin/capture_end directly
        # lets us do both once, before the first capture.  Only the young
        # generations are collected: they hold what loading just dropped, and a
        # full collection walks every object torch and the model made (0.08 s
        # of a warm restart's first token on an H200).
        if first:
            gc.collect(1)
            torch.cuda.empty_cache()
        torch.cuda.synchronize()
        stream = self._side_stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):
            graph.capture_begin(pool=pool)
            try:
                output = fn(*args)
                if weak_output:
                    # Inside the capture: the strong references die before
                    # capture_end, so the memory returns to the pool at once.
                    output = weak_refs(output)
            except BaseException:
                with contextlib.suppress(Exception):
                    graph.capture_end()
                raise
            graph.capture_end()
        torch.cuda.current_stream().wait_stream(stream)
        return graph, output

    def weak_refs(self, value: Any) -> Any:
        return weak_refs(value)


class _EmulatedGraph:
    """Replays by re-running the captured call on the *captured* arguments and
    copying the results into the captured outputs (same objects, same memory)."""

    def __init__(
        self, fn: Callable[..., Any], args: Sequence[Any], output: Any
    ) -> None:
        self.fn = fn
        self.args = tuple(args)
        self.outputs = [
            x for x in tree_flatten(output)[0] if isinstance(x, torch.Tensor)
        ]
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        fresh = [
            x
            for x in tree_flatten(self.fn(*self.args))[0]
            if isinstance(x, torch.Tensor)
        ]
        with torch.no_grad():
            for dst, src in zip(self.outputs, fresh, strict=True):
                if dst.data_ptr() != src.data_ptr():
                    dst.copy_(src)


class EmulatedGraphOps:
    """A CPU stand-in for CUDA graphs, for tests and debugging without a GPU.

    Like a real graph, a replay reads the tensors that were passed at capture
    time, never the ones passed now, and writes into the outputs it returned at
    capture time; so a runtime that forgets to copy new inputs into its static
    buffers, or lets an address change, computes stale results here too.  Memory
    pools and weak references have no effect (pools are only counted).
    """

    needs_cuda = False

    def __init__(self) -> None:
        self.pools = 0
        self.graphs: list[_EmulatedGraph] = []

    def new_pool(self, shared: bool = False) -> Any:
        self.pools += 1
        return ("emulated-pool", self.pools)

    def capture(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        *,
        pool: Any,
        first: bool,
        weak_output: bool,
    ) -> tuple[Any, Any]:
        output = fn(*args)
        graph = _EmulatedGraph(fn, args, output)
        self.graphs.append(graph)
        return graph, output

    def weak_refs(self, value: Any) -> Any:
        return value
