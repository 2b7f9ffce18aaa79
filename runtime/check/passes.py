"""Which configured Inductor pass makes a piece differ: the piece compiled
again without each pass in turn, on the inputs of its first differing call."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import torch.fx as fx

from ..config import CompilationConfig
from ..passes.base import pass_name
from ..pipeline.api import config_adapter
from .compare import Difference, copy_inputs, measure


def find_pass(
    config: CompilationConfig,
    uncompiled: fx.GraphModule,
    example: Sequence[Any],
    skip: Collection[int] = frozenset(),
) -> str:
    """A sentence naming the pass of ``config.inductor_passes`` without which
    the piece agrees with ``uncompiled`` on ``example`` (or why none is named).

    NOTE: [the search compiles for one size]
    Each compile here is static, from the call's own inputs, with the config's
    Inductor options: the piece as served may be a general (dynamic) compile.
    Without any pass it must agree (else no pass is to blame); with one pass
    configured, that pass is named, one compile in all; with several, the
    piece is compiled once more without each.
    """
    passes = list(config.inductor_passes)
    want = uncompiled(*copy_inputs(example))

    def run(subset: list[Any]) -> Difference:
        adapter = config_adapter(dataclasses.replace(config, inductor_passes=subset))
        runnable, _ = adapter.compile(uncompiled, copy_inputs(example), static=True)
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
