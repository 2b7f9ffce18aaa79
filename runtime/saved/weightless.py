"""A compile that needs no weights: the model built on the meta device, its
forward compiled and saved into the cache, for a later start with the weights.

NOTE: [a compile without weights]
What a compile reads of a model is its code and the metadata of its tensors
(shape, dtype, stride, device): Dynamo traces over fake tensors, and neither
the split nor Inductor reads a weight's value.  So the model is built under
``torch.device("meta")`` (no memory, no initialization) and moved with
``to_empty`` to the device it serves on: its tensors are allocated and never
written, so on the CPU their pages are never touched and cost no resident
memory.  :func:`aot_compile` then traces, compiles and saves the forward
exactly as it does for the real model; a later process that calls
``aot_compile`` with the same arguments and the real weights finds the saved
forward and every piece (the cache key holds no weight values), and starts
warm.  A model whose trace reads a weight's value (``.item()``, a branch on
it) cannot be compiled this way, and says so.  The compile runs with
``tiered_start`` off: a process that exists only to compile waits for it.

A forward served through ``torch.compile`` (backed dynamic sizes, a transformers
model at any length) is compiled by :func:`trace_without_weights`: each call
runs Dynamo and Stitch's backend, which compiles every piece into the cache,
and is then stopped before the function runs (it would read the weights).  A
later ``torch.compile`` of the real model with the same backend config and
calls finds every piece: its backend calls load them (Dynamo still traces).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from stitch.core import StitchConfigError, StitchRuntimeError

from ..compat import dynamo
from ..config import CompilationConfig
from ..pipeline.api import CompiledModel, StitchBackend
from .aot import aot_compile

log = logging.getLogger("stitch")


@dataclasses.dataclass(frozen=True)
class WeightlessCompile:
    """Where a compile without weights saved the forward, and how long it took."""

    saved: str
    cache_entry: str | None
    seconds: float


def compile_without_weights(
    build: Callable[[], torch.nn.Module],
    example_inputs: Sequence[Any] = (),
    config: CompilationConfig | None = None,
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    dynamic_dims: Mapping[int | str, Any] | None = None,
    device: str | torch.device = "cpu",
    name: str = "",
) -> WeightlessCompile:
    """Compile and save the forward of the model ``build()`` makes, without its
    weights (NOTE: [a compile without weights]).

    ``build`` is called under ``torch.device("meta")``; the other arguments are
    :func:`aot_compile`'s, and a later ``aot_compile`` with the same ones and
    the real model starts warm.  ``name`` names the model in errors.
    """
    start = time.perf_counter()
    what = name or getattr(build, "__name__", "the model")
    config = _compiling(config or CompilationConfig(), what, "forward")
    model = _built(build, what, device)
    try:
        with torch.no_grad():
            compiled = aot_compile(
                model,
                example_inputs,
                config,
                example_kwargs=example_kwargs,
                dynamic_dims=dynamic_dims,
            )
    except Exception as exc:
        inner = getattr(exc, "inner_exception", exc)
        raise StitchRuntimeError(
            f"compile_without_weights: {what}'s forward cannot be traced without "
            f"its weights ({type(inner).__name__}: {str(inner).splitlines()[0]}); "
            "compile it with its weights (aot_compile)"
        ) from exc
    if compiled.path is None:
        raise StitchRuntimeError(
            f"compile_without_weights: {what} compiled, but its forward could not "
            "be saved (see the warning above); a start with the weights compiles it"
        )
    seconds = time.perf_counter() - start
    log.info(
        "stitch: %s compiled without weights in %.2fs, saved to %s",
        what,
        seconds,
        compiled.path,
    )
    return WeightlessCompile(compiled.path, compiled.cache_entry, seconds)


def _compiling(config: CompilationConfig, what: str, goes: str) -> CompilationConfig:
    """``config`` for a process that only compiles: its cache on (where the
    compiled ``goes``), ``tiered_start`` off (it waits for the compile)."""
    if config.disable_cache:
        raise StitchConfigError(
            f"compile_without_weights({what}): the config disables the cache, "
            f"where the compiled {goes} would go"
        )
    return dataclasses.replace(config, tiered_start=False)


class _Compiled(Exception):
    """Stops a call once its graph is compiled (the function would run next)."""


def _built(
    build: Callable[[], torch.nn.Module], what: str, device: Any
) -> torch.nn.Module:
    try:
        with torch.device("meta"):
            model = build()
    except Exception as exc:
        raise StitchConfigError(
            f"compile_without_weights: {what} does not build on the meta device "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise StitchConfigError(
            f"compile_without_weights: {what} built a {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    return model.to_empty(device=device).eval()


def trace_without_weights(
    build: Callable[[], torch.nn.Module],
    calls: Sequence[Mapping[str, Any]],
    config: CompilationConfig,
    *,
    device: str | torch.device = "cpu",
    name: str = "",
) -> list[CompiledModel]:
    """Compile, into ``config``'s cache, the graphs that
    ``torch.compile(model, backend=StitchBackend(config), dynamic=True)`` makes
    for these calls (keyword arguments), without the weights (NOTE: [a compile
    without weights]); what each backend call produced."""
    what = name or getattr(build, "__name__", "the model")
    stitch = StitchBackend(_compiling(config, what, "pieces"))

    def backend(gm: Any, example_inputs: Any) -> Any:
        stitch(gm, example_inputs)
        raise _Compiled

    model = _built(build, what, device)
    compiled = torch.compile(model, backend=backend, dynamic=True, fullgraph=True)
    for kwargs in calls:
        try:
            with torch.no_grad():
                compiled(**kwargs)
        except Exception as exc:
            inner = exc
            while inner is not None and not isinstance(inner, _Compiled):
                inner = getattr(inner, "inner_exception", None) or inner.__cause__
            if inner is None:
                first = getattr(exc, "inner_exception", exc)
                raise StitchRuntimeError(
                    f"compile_without_weights: {what}'s forward cannot be traced "
                    f"without its weights ({type(first).__name__}: "
                    f"{str(first).splitlines()[0] if str(first) else ''})"
                ) from exc
        else:
            raise StitchRuntimeError(
                f"compile_without_weights: {what} ran without compiling a graph"
            )
    dynamo.reset()
    return stitch.compiled
