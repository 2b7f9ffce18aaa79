"""Floats Dynamo lifted to graph inputs, made constants in the graph before anything compiles.

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

So Stitch specializes them itself, in the graph Dynamo handed it, before
anything is compiled (:func:`specialize_lifted_floats`): each ``.item()`` of a
lifted float, and each use of a SymFloat input, becomes the float's value, and
reading that value guards on it, so Dynamo's guards check it as they would a
constant of a second trace (a model whose ``eps`` changes compiles again).
The input stays in the graph's signature, unused.  Stitch used to ask Dynamo
for the restart instead, which traced the whole frame a second time: 6-7 s of
a 32-layer model's start on 2 cores, paid by every start, warm ones too.
What cannot be substituted (a backed float symbol no input carries, which
Dynamo may make for a float used only in guards) still asks for the restart.

Inductor's pass would still restart on the specialized symbols, which stay in
the ShapeEnv: each Inductor compile of a piece marks them in ``TensorifyState``
for its duration (:func:`floats_marked`), and unmarks them after, so that a
later trace of the same model (after ``torch._dynamo.reset()``, or in another
process) makes the same graph and finds the same cache entry.  The trade-off
is the restart's: a float *argument* of ``forward`` whose value changes
between calls recompiles (Dynamo guards on its value) where stock Inductor
might keep it symbolic.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx

from ..compat import dynamo
from ..compat.fake import FakeTensor, shape_env_of, tracing_fake_mode
from ..compat.shapes import backed_values, float_symbols, is_float_value

log = logging.getLogger("stitch")


def lifted_float_symbols(
    fake_inputs: Sequence[Any], shape_env: Any = None
) -> list[str]:
    """Names of the backed float symbols of the graph not yet made constants (sorted).

    Those its inputs carry (a 0-d tensor's ``item_memo``, a SymFloat input) and,
    as the Inductor pass considers them too, every backed float symbol of the
    ShapeEnv (Dynamo may have made one for a float used only in guards).
    """
    names: set[str] = set()
    for value in fake_inputs:
        sym = _input_float(value)
        if sym is not None:
            names.update(float_symbols(sym.node.expr))
    names.update(str(s) for s in _backed_floats(shape_env))
    return sorted(names - set(_constant_floats(shape_env)))


def specialize_lifted_floats(gm: fx.GraphModule, fake_inputs: Sequence[Any]) -> None:
    """Make the graph's lifted floats constants, guarded on their values.

    Raises ``TensorifyScalarRestartAnalysis`` when a backed float symbol is
    left that no input of the graph carries (Dynamo then traces again with it
    as a constant); returns otherwise.
    """
    mode = tracing_fake_mode()
    if mode is None:
        return  # not under Dynamo: no guards to hold the values
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    made = 0
    for node, value in zip(placeholders, fake_inputs, strict=False):
        # A float already made constant while Dynamo traced (a Python float
        # argument of an op, through torch's argument parser) is read the same
        # way: its value must be in the graph, which the cache key covers.
        # A tensor's unbacked ``.item()`` (a real input, read per call) is
        # not a lifted float and stays as it is.
        sym = _input_float(value)
        if sym is None or not _lifted(sym):
            continue
        uses = list(node.users)
        if isinstance(value, torch.SymFloat):
            reads = uses
        else:
            reads = [u for u in uses if u.op == "call_method" and u.target == "item"]
        if not reads:
            continue
        constant = float(sym)  # guards on the value (Dynamo checks it per call)
        for read in reads:
            if read is node:
                continue
            if read.op == "call_method" and read.target == "item":
                read.replace_all_uses_with(constant)
                gm.graph.erase_node(read)
            else:
                read.replace_input_with(node, constant)
            made += 1
    if made:
        gm.recompile()
        log.debug("stitch: %d reads of lifted floats made constants", made)
    left = lifted_float_symbols(fake_inputs, mode.shape_env)
    names = dynamo.restart_specializing(left)
    if names:
        log.debug("stitch: specializing lifted floats %s (Dynamo traces again)", names)
        raise dynamo.tensorify_restart()


@contextlib.contextmanager
def floats_marked(example_inputs: Sequence[Any]) -> Iterator[None]:
    """Inductor's compile of a piece, with the floats made constants marked
    specialized for its tensorify pass, and unmarked after."""
    names = _constant_floats(shape_env_of(example_inputs))
    added = dynamo.restart_specializing(names) if names else []
    try:
        yield
    finally:
        dynamo.forget_specializing(added)


def _input_float(value: Any) -> Any:
    """The SymFloat a graph input carries: its own, or a 0-d tensor's ``.item()``."""
    if isinstance(value, torch.SymFloat):
        return value
    if isinstance(value, FakeTensor) and value.dim() == 0:
        memo = value.item_memo
        if isinstance(memo, torch.SymFloat):
            return memo
    return None


def _lifted(sym: Any) -> bool:
    """A constant, or made of backed float symbols only (Dynamo's lifted floats)."""
    expr = sym.node.expr
    return bool(expr.is_number) or len(float_symbols(expr)) == len(expr.free_symbols)


def _backed_floats(shape_env: Any) -> list[Any]:
    return [s for s, v in backed_values(shape_env).items() if is_float_value(s, v)]


def _constant_floats(shape_env: Any) -> list[str]:
    """Backed float symbols the ShapeEnv replaced with a number (guarded on it)."""
    replacements = getattr(shape_env, "replacements", None) or {}
    return sorted(
        str(s)
        for s in _backed_floats(shape_env)
        if getattr(replacements.get(s), "is_number", False)
    )
