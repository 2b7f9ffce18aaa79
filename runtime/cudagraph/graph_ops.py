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

    def new_pool(self) -> Any:
        return torch.cuda.graph_pool_handle()

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
        # lets us do both once, before the first capture.
        if first:
            gc.collect()
            torch.cuda.empty_cache()
        torch.cuda.synchronize()
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        stream = self._stream
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

    def new_pool(self) -> Any:
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
