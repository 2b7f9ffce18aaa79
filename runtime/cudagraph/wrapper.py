"""One CUDA graph per piece and size (CUDAGraphWrapper) and the hoisted per-size tables of them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.fx as fx

from stitch.core.errors import StitchRuntimeError

from ..loader import DISPATCH_NAME, SizeTables, bind_runnable
from ..settings import CUDAGraphSettings


class CUDAGraphManager(Protocol):
    """What a wrapper needs of the manager of its graphs (manager.py's
    ``CUDAGraphManager``; a protocol, so the import goes one way: manager ->
    wrapper)."""

    settings: CUDAGraphSettings
    ops: Any
    # Held while a slot changes hands (NOTE: [uncompiled pieces under CUDA graphs]).
    lock: threading.Lock

    def check_capture_allowed(self, piece: str, size: int) -> None: ...

    def capture(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        *,
        piece: str,
        size: int,
        weak_output: bool,
    ) -> tuple[Any, Any, bool]: ...


FULL_GRAPH = "<full forward>"


def _replayer(replay: Callable[[], None], output: Any) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        replay()
        return output

    return run


class CUDAGraphWrapper:
    """One piece (or the whole forward) at one size: warm up, capture, replay.

    ``slot = (container, key)``: where the dispatch holds this wrapper.  After
    capture the wrapper puts a bare replay closure there (NOTE below).
    """

    def __init__(
        self,
        runnable: Callable[..., Any],
        manager: CUDAGraphManager,
        *,
        piece: str,
        size: int,
        weak_output: bool,
        slot: tuple[Any, Any] | None = None,
        min_warmups: int = 0,
    ) -> None:
        config = manager.settings
        self.runnable = runnable
        self.manager = manager
        self.piece = piece
        self.size = size
        self.weak_output = weak_output
        self.slot = slot
        self.warmups_left = max(config.cudagraph_num_of_warmups, min_warmups)
        self.check_addresses = config.cudagraph_check_addresses
        self.copy_inputs = config.cudagraph_copy_inputs
        self.graph: Any = None
        self.output: Any = None
        self.addresses: list[tuple[int, int]] = []
        self.static_inputs: list[tuple[int, torch.Tensor]] = []

    def __call__(self, *args: Any) -> Any:
        graph = self.graph
        if graph is None:
            return self._warm_up_or_capture(args)
        if self.check_addresses:
            self._check(args)
        if self.copy_inputs:
            self._copy(args)
        graph.replay()
        return self.output

    def _warm_up_or_capture(self, args: tuple[Any, ...]) -> Any:
        manager = self.manager
        manager.check_capture_allowed(self.piece, self.size)
        if self.warmups_left > 0:
            self.warmups_left -= 1
            return self.runnable(*args)
        graph, output, kept = manager.capture(
            self.runnable,
            args,
            piece=self.piece,
            size=self.size,
            weak_output=self.weak_output,
        )
        if not kept:
            # NOTE: [a capture that raced with a recapture] (manager.py): this
            # call's output, then the graph goes; the next call warms up (the
            # swap runs there) and captures again.
            graph.replay()
            self.warmups_left = max(self.warmups_left, 1)
            return output
        self.graph = graph
        self.output = manager.ops.weak_refs(output)
        tensors = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        self.addresses = [(i, a.data_ptr()) for i, a in tensors]
        if self.copy_inputs:
            self.static_inputs = [(i, manager.ops.weak_refs(a)) for i, a in tensors]
        # Capturing records the kernels without running them: run them once for
        # this call.
        graph.replay()
        if self.slot is not None and not (self.check_addresses or self.copy_inputs):
            # NOTE: [replay closures in the dispatch tables]
            # Once captured, a piece at a size only ever replays; the table the
            # emitted function indexes then holds a closure that does exactly
            # that, with no attribute lookups or state checks per call.
            container, key = self.slot
            with manager.lock:
                # A tiered start may have replaced this wrapper meanwhile.
                if container[key] is self:
                    container[key] = _replayer(graph.replay, self.output)
        # An intermediate piece returns its strong outputs from the capture: the
        # stitching code holds them until their last use, which keeps later
        # captures of this forward from reusing their memory too early.
        return output

    def _check(self, args: tuple[Any, ...]) -> None:
        for i, address in self.addresses:
            arg = args[i] if i < len(args) else None
            now = arg.data_ptr() if isinstance(arg, torch.Tensor) else None
            if now != address:
                shown = "not a tensor" if now is None else f"at {now:#x}"
                raise StitchRuntimeError(
                    f"piece {self.piece} at size {self.size}: argument {i} is {shown}, "
                    f"but the CUDA graph was captured with it at {address:#x}; a "
                    "replay would read stale memory.  Inputs of captured pieces "
                    "must keep their addresses (parameters, static input buffers, "
                    "outputs of earlier pieces); a splitting op that allocates its "
                    "output breaks this: make it write into a preallocated tensor, "
                    "or set cudagraph_copy_inputs=True"
                )

    def _copy(self, args: tuple[Any, ...]) -> None:
        for i, static in self.static_inputs:
            arg = args[i]
            if arg.data_ptr() != static.data_ptr():
                static.copy_(arg)


class CUDAGraphTables(SizeTables):
    """``__vllm_dispatch__`` with graphs: capture sizes get graph wrappers.

    Other sizes (above the largest capture size) get the compiled runnables,
    as in :class:`SizeTables`.
    """

    def __init__(
        self,
        callables: Sequence[Any],
        manager: CUDAGraphManager,
        names: Sequence[str],
        capture_sizes: Sequence[int],
        *,
        last: int,
    ) -> None:
        super().__init__(callables)
        self.manager = manager
        self.names = list(names)
        self.capture_sizes = frozenset(capture_sizes)
        self.last = last
        # Warm-up calls of every graph made from now on, at least.
        self.min_warmups = 0

    def __missing__(self, size: Any) -> list[Any]:
        size = int(size)
        if size not in self.capture_sizes:
            return super().__missing__(size)
        table: list[Any] = []
        for i, c in enumerate(self.callables):
            runnable = (
                c.runnable_for(size) if hasattr(c, "runnable_for") else bind_runnable(c)
            )
            table.append(
                CUDAGraphWrapper(
                    runnable,
                    self.manager,
                    piece=self.names[i],
                    size=size,
                    weak_output=i == self.last,
                    slot=(table, i),
                    min_warmups=self.min_warmups,
                )
            )
        self[size] = table
        return table


def call_order(split_gm: fx.GraphModule, backends: dict[str, Any]) -> list[str]:
    """The compiled pieces in the order the split graph calls them."""
    return [
        n.target
        for n in split_gm.graph.nodes
        if n.op == "call_module" and n.target in backends
    ]


class FunctionGraphs:
    """The CUDA graphs of one function: its full-graph wrappers per size, its
    piecewise tables, and the plain function's tables of runnables.

    NOTE: [uncompiled pieces under CUDA graphs]
    A tiered start (pipeline/tiered/tier.py) runs pieces uncompiled until their
    compiled form lands.  They are captured at once, as compiled pieces are:
    on a GPU an uncompiled piece's cost is mostly its many kernel launches,
    which a graph replays without the host.  A replay runs no Python, so a
    landed piece would never be called to be swapped in; when one lands,
    :meth:`recapture` asks for the function's graphs to be dropped, and the
    next forward (:meth:`settle`, from ``PaddedRunner.__call__``) puts fresh
    wrappers in every slot and empties the tables, so that forward warms up
    (at least once: the swap runs in that call, never inside a capture) and
    captures again, into the same pool, which the dropped graphs' memory
    returns to.  A wrapper that finishes a capture after its slot was given
    to a fresh one leaves the slot alone (under the manager's lock).

    NOTE: [graphs are dropped on the serving thread]
    A landing arrives on a compile worker's reader thread, maybe while the
    serving thread captures.  Graphs are captured in the "global" mode, in
    which a CUDA call from any other thread (freeing a graph, or memory
    through the caching allocator) invalidates the capture.  So a landing
    only records the request, under the manager's lock, which no capture
    holds: it never waits for a capture, and landings that come between two
    forwards are applied together.
    Dropping, and so every free, happens on the serving thread at the start
    of its next forward, outside any capture (a forward inside a capture
    someone else began leaves the request for a later one).  The dropped
    tables are emptied one by one: a wrapper still in its table is a
    reference cycle, which the cyclic collector would free on whatever
    thread it next runs on.
    """

    def __init__(
        self,
        manager: Any,
        plain: Callable[..., Any],
        runners: dict[int, Any],
        full_sizes: Sequence[int],
        tables: CUDAGraphTables | None,
    ) -> None:
        self.manager = manager
        self.plain = plain
        self.runners = runners
        self.full_sizes = list(full_sizes)
        self.tables = tables
        self.plain_tables = (getattr(plain, "__kwdefaults__", None) or {}).get(
            DISPATCH_NAME
        )
        # Landings that asked for the graphs to be dropped.
        self.recaptures = 0
        # Something to drop at the next forward (read there without the lock).
        self.stale = False
        self._drop_graphs = False
        self._drop_runnables = False

    def full_wrapper(self, size: int, min_warmups: int = 0) -> CUDAGraphWrapper:
        return CUDAGraphWrapper(
            self.plain,
            self.manager,
            piece=FULL_GRAPH,
            size=size,
            weak_output=True,
            slot=(self.runners, size),
            min_warmups=min_warmups,
        )

    def recapture(self) -> None:
        """Ask for every graph of this function to be dropped (any thread):
        each size captures again after its next forward's warm-up call
        (NOTE: [graphs are dropped on the serving thread])."""
        with self.manager.lock:
            self._drop_graphs = True
            self.recaptures += 1
            self.stale = True

    def piecewise_sizes(self) -> list[int]:
        return sorted(self.tables.capture_sizes) if self.tables is not None else []

    def drop_runnables(self) -> None:
        """Ask for the plain function's tables to fill again with the pieces'
        runnables as they are now (after a swap), at the next forward."""
        with self.manager.lock:
            self._drop_runnables = True
            self.stale = True

    def settle(self) -> None:
        """Drop what :meth:`recapture` and :meth:`drop_runnables` asked for; the
        serving thread, at the start of a forward."""
        if self.capturing():
            return  # a forward inside a capture: a later one drops
        manager = self.manager
        with manager.lock:
            graphs, self._drop_graphs = self._drop_graphs, False
            self._drop_runnables = self.stale = False
            if graphs:
                for size in self.full_sizes:
                    self.runners[size] = self.full_wrapper(size, min_warmups=1)
                if self.tables is not None:
                    self.tables.min_warmups = 1
                    for table in self.tables.values():
                        table.clear()
                    self.tables.clear()
            if self.plain_tables is not None:
                self.plain_tables.clear()
        if graphs:
            manager.recapture_sizes(set(self.full_sizes) | set(self.piecewise_sizes()))

    def capturing(self) -> bool:
        """Whether a graph is being captured: by the manager, or around this
        function (an engine's own graph)."""
        if self.manager.capturing:
            return True
        return bool(
            self.manager.ops.needs_cuda
            and torch.cuda.is_available()
            and torch.cuda.is_current_stream_capturing()
        )
