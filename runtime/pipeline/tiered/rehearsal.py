"""Dynamo's first forward rehearsed on the stitched function, so that every
uncompiled piece keeps its inputs (NOTE: [the first forward rehearsed]).

NOTE: [the first forward rehearsed]
A landed piece swaps in without its next call where its first call kept its
inputs (NOTE: [a landed piece swaps without its next call], swap.py).  A
graph that Dynamo's graph served while its stitching was built (NOTE:
[Dynamo's graph serves while the stitching is built]) and that is not called
again for a while had no such call: a transformers Llama's prefill graph ran
its first prompt on Dynamo's graph, and its pieces swapped in at the next
prompt, 48 decode steps after they landed.

So the first forward of Dynamo's graph keeps a copy of its inputs
(:func:`keep_graph_inputs`), and the build, once the stitched function is
made and before it serves, runs it once on that copy
(:func:`rehearse`): each uncompiled piece runs and keeps its inputs, as a
first call would.  Its output is dropped.  Dynamo's graph serves meanwhile,
as fast as the uncompiled pieces would.  The copy is kept where the
rehearsal computes nothing the serving process can see:

- what a piece's kept inputs need (swap.py's NOTE): the CPU, gradients off,
  no autocast, and every op of the graph local to this process, splitting
  ops included (Stitch's attention ops write only their arguments; vLLM's
  read its forward context, which a second thread must not write through);
- every input tensor copied, the caches the splitting ops write among them,
  but the parameters, which are referenced, unless the graph writes one;
- a graph that writes an attribute of its module (a ``get_attr``) is not
  rehearsed;
- at most :data:`swap.KEEP_BYTES` copied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from stitch.codegen.pieces import written_args

from . import swap
from .swap import KeptInputs, copy_inputs, runs_off_thread

log = logging.getLogger("stitch")


def keep_graph_inputs(gm: fx.GraphModule, args: tuple[Any, ...]) -> KeptInputs | None:
    """A copy of the inputs of Dynamo's first forward, where the NOTE allows."""
    if not runs_off_thread(gm):
        return None
    written = written_inputs(gm)
    if written is None:
        return None
    return copy_inputs(
        args,
        lambda i, t: isinstance(t, torch.nn.Parameter) and i not in written,
        swap.KEEP_BYTES,
    )[0]


def rehearse(fn: Callable[..., Any], kept: KeptInputs, label: str) -> None:
    """Run the stitched function ``fn`` once on ``kept`` (its output dropped);
    a failure is logged and leaves the pieces to swap at their next calls."""
    swap.rehearsing.on = True
    try:
        with torch.inference_mode(kept.inference), torch.no_grad():
            fn(*kept.args)
    except Exception as exc:  # noqa: BLE001 - the pieces swap at their next calls
        log.debug(
            "stitch: %s: the rehearsal of its first forward failed: %r", label, exc
        )
    finally:
        swap.rehearsing.on = False


def written_inputs(gm: fx.GraphModule) -> set[int] | None:
    """The positions of the inputs ``gm`` may write (through views too); None
    if it may write an attribute of its module (a ``get_attr``)."""
    position = {n: i for i, n in enumerate(gm.graph.find_nodes(op="placeholder"))}
    found: set[int] = set()
    for node in gm.graph.nodes:
        for base in written_args(node):
            # Back through whatever made it (a view's base is its first
            # argument; a tensor made in the graph ends at a size or a value).
            while isinstance(base, fx.Node) and base.op in (
                "call_function",
                "call_method",
            ):
                base = base.args[0] if base.args else None
            if isinstance(base, fx.Node) and base.op == "placeholder":
                found.add(position[base])
            elif isinstance(base, fx.Node):
                return None  # an attribute of the module (get_attr)
    return found
