"""Floats Dynamo lifted to graph inputs: specialized before any piece compiles.

NOTE: [lifted floats are specialized up front]
Under ``dynamic=True`` Dynamo does not bake a Python float (a norm's ``eps``,
an embedding's ``norm_type``, a rotary scaling) into the graph: it lifts it to a
0-d float64 tensor input read with ``.item()``, a backed SymFloat.  Inductor's
``tensorify_python_scalars`` pass later either turns each such float back into
tensor arithmetic or, when it cannot (the float feeds an op that takes a Python
float), records it in Dynamo's ``TensorifyState`` and raises
``TensorifyScalarRestartAnalysis``: Dynamo traces the frame again with those
floats as constants.

The pass judges a graph against every backed float symbol of the ShapeEnv,
which the pieces of a split graph share.  Compiling the first piece that does
float work therefore specializes every float *other* pieces use and restarts
Dynamo (seen on a 2-layer transformers Llama: one restart, 7 of 9 floats made
constants).  The Inductor compiles of the pieces before it are wasted, and the
graph Dynamo traced first never finishes, so it never reaches the cache: a
second process traces it again, misses, compiles, and restarts again; its
"warm" start compiles.

So Stitch asks for that restart itself, before anything is compiled: a graph
that still has lifted floats marks them all in the same ``TensorifyState`` the
pass uses, and Dynamo traces again with them as constants.  This costs one
more Dynamo trace, as stock ``torch.compile`` pays for a float it cannot keep,
and no Inductor compile; the graph that follows is the one that is cached.
The trade-off: a float *argument* of ``forward`` whose value changes between
calls recompiles (Dynamo guards on its value) where stock Inductor might keep
it symbolic.  Symbol names are stable across restarts and processes, so the
same model asks for the same restart every time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ..compat import dynamo
from ..compat.fake import FakeTensor, tracing_fake_mode
from ..compat.shapes import backed_values, float_symbols, is_float_value

log = logging.getLogger("stitch")


def lifted_float_symbols(
    fake_inputs: Sequence[Any], shape_env: Any = None
) -> list[str]:
    """Names of the backed float symbols of the graph (sorted).

    Those its inputs carry (a 0-d tensor's ``item_memo``, a SymFloat input) and,
    as the Inductor pass considers them too, every backed float symbol of the
    ShapeEnv (Dynamo may have made one for a float used only in guards).
    """
    names: set[str] = set()
    for value in fake_inputs:
        sym = None
        if isinstance(value, torch.SymFloat):
            sym = value
        elif isinstance(value, FakeTensor) and value.dim() == 0:
            memo = value.item_memo
            if isinstance(memo, torch.SymFloat):
                sym = memo
        if sym is None:
            continue
        names.update(float_symbols(sym.node.expr))
    for s, value in backed_values(shape_env).items():
        if is_float_value(s, value):
            names.add(str(s))
    return sorted(names)


def specialize_lifted_floats(fake_inputs: Sequence[Any]) -> None:
    """Ask Dynamo to trace again with the graph's lifted floats as constants.

    Raises ``TensorifyScalarRestartAnalysis`` when the graph has lifted floats
    not yet marked for specialization; returns otherwise.
    """
    mode = tracing_fake_mode()
    if mode is None:
        return  # not under Dynamo: nobody to restart
    names = dynamo.restart_specializing(
        lifted_float_symbols(fake_inputs, mode.shape_env)
    )
    if not names:
        return
    log.debug("stitch: specializing lifted floats %s (Dynamo traces again)", names)
    raise dynamo.tensorify_restart()
