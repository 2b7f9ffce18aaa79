"""CUDAGraphManager: the pool, the capture switch, start-up capture, and building the padded runtime."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from stitch.core.errors import StitchError, StitchRuntimeError

from ..compat.trace import phase
from ..counter import compilation_counter
from ..loader import compile_execution_fn
from ..progress import progress_bar
from ..settings import CUDAGraphMode, CUDAGraphSettings
from ..size import RuntimeSize
from .building import build_runner, plan_graphs
from .graph_ops import CUDAGraphOps
from .graph_plan import GraphPlan
from .padding import (
    PaddedRunner,
    capture_order,
)
from .wrapper import CUDAGraphTables

log = logging.getLogger("stitch")


class CUDAGraphManager:
    """What all graphs of one :class:`StitchBackend` share.

    One memory pool for every piece and size, the capture-after-start-up switch,
    and the start-up capture loop (:meth:`capture_sizes`).
    """

    def __init__(
        self,
        settings: CUDAGraphSettings,
        *,
        ops: Any = None,
        shared_pool: bool = True,
    ) -> None:
        # Its own section of the config (CompilationConfig.cudagraphs), no more.
        self.settings = settings
        self.ops = ops if ops is not None else CUDAGraphOps()
        # False gives every graph its own pool: only for measuring what sharing saves.
        self.shared_pool = shared_pool
        self.capture_allowed = True
        self.num_captured = 0
        self._pool: Any = None
        self._captured_any = False
        # The sizes that have a graph, and those left for later (capture_pending).
        self.captured_sizes: set[int] = set()
        self.pending: list[int] = []
        # Every padded runner built here, newest last (inspection, benchmarks).
        self.runners: list[PaddedRunner] = []
        # NOTE: [uncompiled pieces under CUDA graphs] (wrapper.py)
        self.lock = threading.Lock()
        self.capturing = False
        # Per size, bumped as its graphs are dropped (NOTE in capture).
        self._generation: dict[int, int] = {}

    # -- decisions -------------------------------------------------------------
    def applies_to(self, example_inputs: Sequence[Any]) -> bool:
        """Graphs are used when the mode asks for them and the graph runs on CUDA."""
        if self.settings.cudagraph_mode is CUDAGraphMode.NONE:
            return False
        if not self.ops.needs_cuda:
            return True
        return torch.cuda.is_available() and any(
            isinstance(v, torch.Tensor) and v.device.type == "cuda"
            for v in example_inputs
        )

    # -- the capture switch ------------------------------------------------------
    def forbid_capture(self) -> None:
        self.capture_allowed = False

    def allow_capture(self) -> None:
        self.capture_allowed = True

    def check_capture_allowed(self, piece: str, size: int) -> None:
        if not self.capture_allowed:
            raise StitchRuntimeError(
                f"a CUDA graph of piece {piece} at size {size} would be captured now, "
                "but capture is forbidden after start-up (CompilationConfig."
                "cudagraph_forbid_capture_after_startup=True or CUDAGraphManager."
                "forbid_capture()).  Capture every size the server runs at start-up "
                "with CUDAGraphManager.capture_sizes(run) (capture sizes: "
                f"{self.settings.cudagraph_capture_sizes}); a recompilation after "
                "start-up needs its graphs captured too"
            )

    # -- capture -------------------------------------------------------------------
    def capture(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        *,
        piece: str,
        size: int,
        weak_output: bool,
    ) -> tuple[Any, Any, bool]:
        """Graph, output, and whether the size counts as captured (NOTE below)."""
        self.check_capture_allowed(piece, size)
        pool = self._pool if self.shared_pool else self.ops.new_pool()
        if pool is None:
            pool = self._pool = self.ops.new_pool(shared=True)
        generation = self._generation.get(size, 0)
        self.capturing = True
        try:
            graph, output = self.ops.capture(
                fn,
                args,
                pool=pool,
                first=not self._captured_any,
                weak_output=weak_output,
            )
        except StitchError:
            raise
        except Exception as exc:
            raise StitchRuntimeError(
                f"capturing the CUDA graph of piece {piece} at size {size} failed: "
                f"{type(exc).__name__}: {exc}.  An op in the piece may not be "
                "capturable (a host sync, a CPU tensor, an allocation outside the "
                "caching allocator); compare with cudagraph_mode='NONE'"
            ) from exc
        finally:
            self.capturing = False
        self._captured_any = True
        self.num_captured += 1
        compilation_counter.num_cudagraph_captured += 1
        # NOTE: [a capture that raced with a recapture]
        # A capture runs outside the lock.  If recapture_sizes dropped this
        # size's graphs meanwhile, marking it captured would undo that (under
        # cudagraph_forbid_capture_after_startup its next capture would raise):
        # it goes back to pending, and the caller replays the stale graph once
        # for this call and drops it.
        with self.lock:
            kept = self._generation.get(size, 0) == generation
            if kept:
                self.captured_sizes.add(size)
            elif size not in self.captured_sizes | set(self.pending):
                self.pending.append(size)
                self.capture_allowed = True
        return graph, output, kept

    def capture_sizes(
        self,
        run: Callable[[int], Any],
        sizes: Sequence[int] | None = None,
        *,
        defer_rest: bool = False,
    ) -> None:
        """Start-up capture: ``run(size)`` for every capture size, largest first.

        ``run(size)`` must do one forward of ``size`` tokens (dummy inputs are
        fine).  Each size runs ``cudagraph_num_of_warmups`` eager warm-up
        forwards, then the capturing one.  With
        ``cudagraph_forbid_capture_after_startup`` set, capture is forbidden
        afterwards.

        NOTE: [capture what the first request needs]
        With ``defer_rest=True`` only ``sizes`` (the size about to be served, or
        the few smallest) are captured now: the first request does not wait for
        every size.  The other capture sizes are left in :attr:`pending`: each
        is captured at its first use, or by :meth:`capture_pending` while the
        server is idle, into the same pool.  Capture stays allowed until none
        is pending.
        """
        every = capture_order(self.settings.cudagraph_capture_sizes or ())
        order = capture_order(every if sizes is None else sizes)
        self._capture_loop(run, order)
        if defer_rest:
            self.pending = [s for s in every if s not in self.captured_sizes]
        elif self.settings.cudagraph_forbid_capture_after_startup:
            self.forbid_capture()

    def capture_pending(
        self, run: Callable[[int], Any], budget_s: float | None = None
    ) -> int:
        """Capture the sizes :meth:`capture_sizes` left pending, largest first,
        for at most ``budget_s`` seconds (a server's idle time); the number still
        pending.  Sizes a request captured meanwhile are skipped."""
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        while self.pending:
            size = self.pending.pop(0)
            if size in self.captured_sizes:
                continue
            self._capture_loop(run, [size], quiet=True)
            if deadline is not None and time.perf_counter() >= deadline:
                break
        self.pending = [s for s in self.pending if s not in self.captured_sizes]
        if not self.pending and self.settings.cudagraph_forbid_capture_after_startup:
            self.forbid_capture()
        return len(self.pending)

    def recapture_sizes(self, sizes: set[int]) -> None:
        """A function dropped its graphs of ``sizes`` (NOTE: [uncompiled pieces
        under CUDA graphs]): they are pending again, and capture is allowed
        until :meth:`capture_pending` has captured them."""
        with self.lock:
            self._generation.update({s: self._generation.get(s, 0) + 1 for s in sizes})
            again = sorted(sizes & self.captured_sizes, reverse=True)
            self.captured_sizes -= sizes
            self.pending = self.pending + [s for s in again if s not in self.pending]
            self.capture_allowed = True

    def _capture_loop(
        self, run: Callable[[int], Any], order: Sequence[int], quiet: bool = False
    ) -> None:
        calls = self.settings.cudagraph_num_of_warmups + 1
        bar = progress_bar(
            len(order),
            "stitch: capturing CUDA graphs",
            "size",
            enabled=not quiet and len(order) >= 8,
        )
        before, start = self.num_captured, time.perf_counter()
        # No collection between captures: a pause there only delays the start.
        with _gc_paused(), phase("stitch_capture", sizes=list(order)):
            try:
                for size in order:
                    for _ in range(calls):
                        run(size)
                    bar.update(1)
            finally:
                bar.close()
        (log.debug if quiet else log.info)(
            "stitch: captured %d CUDA graphs for %d sizes in %.2fs",
            self.num_captured - before,
            len(order),
            time.perf_counter() - start,
        )

    # -- building the runtime --------------------------------------------------------
    def applies_to_plan(self, plan: GraphPlan) -> bool:
        """:meth:`applies_to` for a saved function: its padded inputs' devices."""
        if self.settings.cudagraph_mode is CUDAGraphMode.NONE:
            return False
        if not self.ops.needs_cuda:
            return True
        return torch.cuda.is_available() and any(
            d.device.type == "cuda" for d in plan.padding.dynamic
        )

    def plan(
        self,
        *,
        graph: fx.GraphModule,
        split_gm: fx.GraphModule,
        example_inputs: Sequence[Any],
        backends: dict[str, Any],
        submod_names: Sequence[str],
        size: RuntimeSize | None,
        compile_sizes: Sequence[int],
    ) -> GraphPlan | None:
        """What the graphs of one compilation need from its graph (None: no
        graphs): :func:`building.plan_graphs`."""
        return plan_graphs(
            self.settings,
            graph,
            split_gm,
            example_inputs,
            backends,
            submod_names,
            size,
            compile_sizes,
        )

    def piecewise(
        self,
        plan: GraphPlan,
        *,
        code: str,
        backends: dict[str, Any],
        submod_names: Sequence[str],
        consts: Sequence[Any],
        filename: str | None,
        ranges: Any,
        plain: Callable[..., Any],
    ) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """The runners of the piecewise sizes and of the sizes above the largest.

        The emitted function with the dispatch hoisted: one table lookup per
        forward picks every piece's runnable at the padded size (its CUDA
        graph).  bench/vllm_style.py overrides this with vLLM's per-piece path,
        the baseline the benchmark compares against.
        """
        tables = CUDAGraphTables(
            [backends[name] for name in submod_names],
            self,
            submod_names,
            sorted(self.settings.cudagraph_capture_sizes or ()),
            last=plan.last,
        )
        piecewise = compile_execution_fn(
            code,
            backends,
            submod_names,
            consts,
            dispatch=tables,
            filename=filename,
            ranges=ranges,
        )
        return piecewise, plain

    def build(
        self,
        plan: GraphPlan | None,
        *,
        code: str,
        backends: dict[str, Any],
        submod_names: Sequence[str],
        consts: Sequence[Any],
        filename: str | None = None,
        ranges: Any = None,
    ) -> Callable[..., Any]:
        """The execution function with padding and CUDA graphs, from ``plan``
        (:func:`building.build_runner`); ``filename`` is the file holding
        ``code``, if any."""
        runner = build_runner(
            self, plan, code, backends, submod_names, consts, filename, ranges
        )
        if isinstance(runner, PaddedRunner):
            self.runners.append(runner)
        return runner


@contextlib.contextmanager
def _gc_paused() -> Any:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
