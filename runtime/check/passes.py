"""Which configured Inductor pass makes a piece differ: the piece compiled
again without each pass in turn, as it was served, and run on the inputs of its
first differing call."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch.fx as fx

from stitch.codegen.fingerprint import example_value

from ..compat.fake import fake_mode_of, tracing
from ..config import CompilationConfig
from ..passes.base import pass_name
from ..pipeline.api import PiecewiseBackend, config_adapter
from ..targets import Target
from .compare import Difference, copy_inputs, measure


def find_pass(
    config: CompilationConfig,
    uncompiled: fx.GraphModule,
    example: Sequence[Any],
    skip: Collection[int] = frozenset(),
    *,
    static: bool = False,
) -> str:
    """A sentence naming the pass of ``config.inductor_passes`` without which
    the piece agrees with ``uncompiled`` on ``example`` (or why none is named).

    NOTE: [the search compiles the piece as it was served]
    A call served by a compile size's runnable (``static``) is compiled again
    for that size, from the call's own inputs; any other by the general
    runnable, which is compiled again from the piece's own symbolic inputs
    (its placeholders' fake values, in Dynamo's fake mode), as the backend
    call compiled it.  So every kernel the passes leave alone is the served
    compile's, and Inductor loads it from its code cache instead of running
    the C++ compiler again: on the llama example's faulty last piece, one
    kernel is built where a static compile built three (docs/performance.md,
    "Finding the faulty piece").

    Without any pass the piece must agree (else no pass is to blame); with
    one pass configured, that pass is named, one compile in all; with
    several, the piece is compiled once more without each.  The caller runs
    the search in the grad mode the pieces were compiled in (NOTE: [the
    search runs without grad], run.py).
    """
    passes = list(config.inductor_passes)
    want = uncompiled(*copy_inputs(example))
    compile_piece = _compiler(uncompiled, example, static)

    def run(subset: list[Any]) -> Difference:
        runnable = compile_piece(dataclasses.replace(config, inductor_passes=subset))
        return measure(runnable(*copy_inputs(example)), want, "output", skip)

    bare = run([])
    if bare.beyond:
        return (
            f"without any of the {len(passes)} configured Inductor passes it "
            f"still differs ({bare.first}, by up to {bare.abs:.3g}): not a pass, "
            "but Inductor itself or its options (inductor_compile_config)"
        )
    if len(passes) == 1:
        culprits = [(0, passes[0], bare)]
    else:
        culprits = []
        for i, p in enumerate(passes):
            without = run([q for q in passes if q is not p])
            if not without.beyond:
                culprits.append((i, p, without))
    if not culprits:
        return (
            f"no single pass: without any one of the {len(passes)} passes it "
            "still differs, without all of them it agrees"
        )
    named = ", ".join(
        f"{pass_name(p)} (inductor_passes[{i}]; without it: {d.abs:.3g})"
        for i, p, d in culprits
    )
    return f"the Inductor pass that makes the difference: {named}"


def served_static(served: Any, example: Sequence[Any]) -> bool:
    """Whether the call of ``served`` (a piece's PiecewiseBackend) on
    ``example`` ran a runnable compiled for its size (``compile_sizes``)."""
    if not isinstance(served, PiecewiseBackend) or served.size_index is None:
        return False
    size = int(example[served.size_index])
    return Target("size", size, size) in served.runnables


def _compiler(
    uncompiled: fx.GraphModule, example: Sequence[Any], static: bool
) -> Callable[[CompilationConfig], Any]:
    """How the search compiles the piece under a config (NOTE: [the search
    compiles the piece as it was served])."""
    fakes = [example_value(n) for n in uncompiled.graph.nodes if n.op == "placeholder"]
    mode = fake_mode_of(fakes)
    general = not static and mode is not None and all(v is not None for v in fakes)

    def compile_piece(config: CompilationConfig) -> Any:
        adapter = config_adapter(config)
        if not general:
            # A compile size's runnable, or a graph without fake values (not
            # from Dynamo): compiled for the call's own sizes.
            return adapter.compile(uncompiled, copy_inputs(example), static=True)[0]
        with tracing(mode):
            return adapter.compile(uncompiled, fakes, static=False)[0]

    return compile_piece
