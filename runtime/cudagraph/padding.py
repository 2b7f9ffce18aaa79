"""Padding to capture sizes: the padding table, the capture order, and the runner that pads each call (its plan: padding_plan.py)."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from stitch.core.errors import (
    StitchConfigError,
    StitchError,
    StitchInputError,
    StitchRuntimeError,
)

from ..compat.dynamo import tensor_guards
from ..compat.pytree import tree_flatten, tree_unflatten
from ..settings import CUDAGraphMode, CUDAGraphSettings
from .padding_plan import PaddingPlan

log = logging.getLogger("stitch")


def padding_table(capture_sizes: Sequence[int]) -> list[int]:
    """``table[n]``: the smallest capture size >= ``n``, for ``0 <= n <= max``.

    A list indexed by ``n`` makes the per-forward padding decision one index
    operation; sizes above the largest capture size have no entry (no graphs).
    """
    sizes = sorted(set(capture_sizes))
    if not sizes:
        return []
    return [sizes[bisect.bisect_left(sizes, n)] for n in range(sizes[-1] + 1)]


def capture_order(sizes: Sequence[int]) -> list[int]:
    """Largest first.

    NOTE: [capture from the largest size down]
    All graphs share one memory pool.  The largest size's graphs reserve the
    most memory; every smaller size then fits into blocks the pool already
    holds, so capturing many sizes costs little more than the largest one.
    """
    return sorted(set(sizes), reverse=True)


def check_padding(config: CUDAGraphSettings, compile_sizes: Sequence[int]) -> None:
    """Compile sizes must be sizes the padding can produce.

    With graphs on, a call of ``n <= max capture size`` runs at the padded size,
    so a compile size below the maximum that is not a capture size would never
    run: the config is inconsistent, not merely wasteful.
    """
    sizes = set(config.cudagraph_capture_sizes or ())
    if not sizes:
        return
    dead = [s for s in compile_sizes if s <= max(sizes) and s not in sizes]
    if dead:
        raise StitchConfigError(
            f"CompilationConfig.compile_sizes={list(compile_sizes)!r}: size(s) "
            f"{dead} are at most the largest CUDA graph capture size {max(sizes)} "
            "but are not capture sizes, so padding never runs them; add them to "
            "cudagraph_capture_sizes or drop them from compile_sizes"
        )


def full_graph_limit(config: CUDAGraphSettings) -> int:
    """The largest padded size captured as one full graph (0: none)."""
    mode = config.cudagraph_mode
    sizes = config.cudagraph_capture_sizes or ()
    if mode is CUDAGraphMode.FULL:
        return max(sizes, default=0)
    if mode is CUDAGraphMode.FULL_AND_PIECEWISE:
        # NOTE: [FULL_AND_PIECEWISE without a limit]
        # Nothing in the config then says where the whole forward cannot be
        # captured, so every capture size gets a full graph (as FULL);
        # max_full_cudagraph_size moves the sizes above it to piecewise graphs.
        limit = config.max_full_cudagraph_size
        return max(sizes, default=0) if limit is None else limit
    return 0


class PaddedRunner:
    """The function the backend returns when graphs are on.

    Pads ``n`` to the smallest capture size ``p >= n`` (one index into the
    padding table), copies the dynamic inputs into static buffers of ``p`` rows
    with one batched copy (rows ``n..p-1`` get the input's pad value), runs the
    runner for ``p`` and slices the outputs back to ``n``.

    NOTE: [outputs live until the next forward]
    Under graphs the outputs are views of graph memory that the next forward
    overwrites (as in vLLM); clone what must outlive it.
    """

    def __init__(
        self,
        plan: PaddingPlan,
        padding: list[int],
        runners: dict[int, Callable[..., Any]],
        above_max: Callable[..., Any],
    ) -> None:
        self.plan = plan
        self.padding = padding
        self.max_size = len(padding) - 1
        self.runners = runners
        self.above_max = above_max
        self.size_index = plan.size_index
        self.dynamic_indices = [d.index for d in plan.dynamic]
        gap = max((p - n for n, p in enumerate(padding)), default=0)
        # Normal tensors even when built under inference_mode: those may be
        # updated in place in any mode.
        with torch.inference_mode(False):
            self.buffers = [
                torch.empty((self.max_size, *d.rest), dtype=d.dtype, device=d.device)
                for d in plan.dynamic
            ]
            self.pad_blocks = [
                torch.full((gap, *d.rest), d.pad, dtype=d.dtype, device=d.device)
                for d in plan.dynamic
            ]
        self.flat_output = plan.flat_output
        # The function's graphs (wrapper.FunctionGraphs), set by its manager.
        self.graphs: Any = None
        self._steps: dict[int, tuple[Any, ...]] = {}

    def _step(self, n: int) -> tuple[Any, ...]:
        """Everything a call of ``n`` tokens needs, built once per ``n``."""
        p = self.padding[n]
        dsts = [b[:n] for b in self.buffers]
        pads: list[torch.Tensor] = []
        if p > n:
            dsts += [b[n:p] for b in self.buffers]
            pads = [block[: p - n] for block in self.pad_blocks]
        fixed = [(i, p) for i in self.plan.size_indices] + [
            (d.index, b[:p])
            for d, b in zip(self.plan.dynamic, self.buffers, strict=True)
        ]
        step = (p, dsts, pads, fixed, self._guard(n))
        self._steps[n] = step
        return step

    def __call__(self, *args: Any) -> Any:
        graphs = self.graphs
        if graphs is not None and graphs.stale:
            # NOTE: [graphs are dropped on the serving thread] (wrapper.py)
            graphs.settle()
        n = args[self.size_index]
        if n > self.max_size:
            return self.above_max(*args)
        step = self._steps.get(n)
        if step is None:
            step = self._step(n)
        p, dsts, pads, fixed, guard = step
        if dsts:
            inputs = [args[i] for i in self.dynamic_indices]
            # NOTE: [only inputs that fit are copied into the static buffers]
            # copy_ would broadcast a short input over the rows and cast another
            # dtype: every dynamic input must have n rows, the buffer's trailing
            # dims, dtype and device (one C++ check; Python only when it fails,
            # which may be just another dispatch key: an inference tensor).
            if not guard.check(*inputs):
                self._check_inputs(inputs, n)
            try:
                torch._foreach_copy_(
                    dsts, [args[i] for i in self.dynamic_indices] + pads
                )
            except RuntimeError as exc:
                raise self._input_error(args, n, exc) from exc
        call_args = list(args)
        for i, value in fixed:
            call_args[i] = value
        out = self.runners[p](*call_args)
        if p == n:
            return out
        return self._slice(out, n)

    def _slice(self, out: Any, n: int) -> Any:
        plan = self.plan.slice_outputs
        if (
            self.flat_output
            and isinstance(out, (tuple, list))
            and len(out) == len(plan)
        ):
            return type(out)(o[:n] if s else o for o, s in zip(out, plan, strict=False))
        leaves, spec = tree_flatten(out)
        if len(leaves) != len(plan):
            raise StitchRuntimeError(
                f"the padded forward returned {len(leaves)} values; the graph "
                f"declares {len(plan)}"
            )
        return tree_unflatten(
            [o[:n] if s else o for o, s in zip(leaves, plan, strict=False)], spec
        )

    def _guard(self, n: int) -> Any:
        with torch.inference_mode(False):
            examples = [b[:n] for b in self.buffers]
        return tensor_guards(
            *examples,
            dynamic_dims_sizes=[[n, *d.rest] for d in self.plan.dynamic],
            dynamic_dims_strides=[
                [None] * (1 + len(d.rest)) for d in self.plan.dynamic
            ],
        )

    def _check_inputs(self, inputs: Sequence[Any], n: int) -> None:
        for d, arg in zip(self.plan.dynamic, inputs, strict=True):
            if not isinstance(arg, torch.Tensor):
                given = type(arg).__name__
            elif tuple(arg.shape) != (n, *d.rest):
                given = f"shape {tuple(arg.shape)}"
            elif arg.dtype != d.dtype or arg.device != d.device:
                given = f"{arg.dtype} on {arg.device}"
            else:
                continue
            raise StitchInputError(
                f"input {d.name}: expected {n} rows (the runtime size) and trailing "
                f"dims {d.rest}, {d.dtype} on {d.device}, got {given}; it is not "
                "copied into the CUDA graph's static buffer"
            )

    def _input_error(
        self, args: tuple[Any, ...], n: int, exc: Exception
    ) -> StitchError:
        for d in self.plan.dynamic:
            arg = args[d.index]
            if not isinstance(arg, torch.Tensor) or tuple(arg.shape) != (n, *d.rest):
                shape = (
                    tuple(arg.shape)
                    if isinstance(arg, torch.Tensor)
                    else type(arg).__name__
                )
                return StitchRuntimeError(
                    f"input {d.name} has shape {shape}, but the runtime size is {n}: "
                    f"every dynamic input must have {n} rows and trailing dims {d.rest}"
                )
        return StitchRuntimeError(
            f"copying the inputs into the static buffers failed: {exc}"
        )
