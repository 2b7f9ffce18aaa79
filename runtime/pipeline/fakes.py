"""The fake inputs of one backend call, made in the fake mode Inductor traces in.

NOTE: [pieces trace in the backend's fake mode]
Dynamo traces a model in one FakeTensorMode and, before it calls a backend,
installs a *fresh* one (sharing the ShapeEnv) in the TracingContext: tracing may
have mutated the metadata of its fake tensors (in-place ops on buffers, such as
a static KV cache), so the fakes in the graph's ``example_value`` metadata no
longer describe the inputs as they are at the start of the graph.  A backend
gets the real tensors and fakeifies them again in the fresh mode; Inductor's
AOTAutograd does exactly that (``process_inputs``: ``fake_mode.from_tensor``
with the symbolic context Dynamo recorded for each tensor).

Stitch used to build each piece's example inputs from the stale
``example_value`` fakes, which belong to the *old* mode.  standalone_compile
(``dynamic_shapes="from_tracing_context"``) traces in the new mode, so
AOTAutograd re-fakeified every input across modes, without its source or
symbolic context.  What lives on a fake tensor and not in the ShapeEnv was lost
on the way: above all the ``item_memo`` of a 0-d tensor that Dynamo lifted from
a Python float or int (``specialize_float=False``, ``dynamic=True``: an
``eps`` attribute becomes a tensor input read with ``.item()``).  Without the
memo, ``.item()`` in the copy is data-dependent and fake propagation raised
``DataDependentOutputException: aten._local_scalar_dense.default``.  Any lifted
scalar, any input whose metadata Dynamo's trace changed, hit it, not only
``eps``.

So the fakes are made as Inductor makes them: real example inputs are
fakeified in the TracingContext's mode (``from_tensor`` finds the symbolic
context and source Dynamo recorded, and rebuilds the memo of a lifted scalar
from its source, with the very symbol Dynamo guarded on).  Every piece's example
inputs come from fake propagation in that same mode, so nothing crosses modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx

from stitch.codegen.fingerprint import example_value
from stitch.core.errors import StitchRuntimeError

from ..compat.fake import FakeTensor, detect_fake_mode, tracing_fake_mode


def backend_fake_inputs(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> list[Any]:
    """One fake value per placeholder of ``gm``, in the mode Inductor traces in.

    Inside a torch.compile backend call the real example inputs are fakeified in
    the TracingContext's mode (see the note above).  Outside one (a graph from
    ``make_fx`` handed to the backend directly), a placeholder's ``val`` /
    ``example_value`` metadata is used, else the example itself, fakeified in
    the mode of the other examples when there is one.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise StitchRuntimeError(
            f"graph has {len(placeholders)} placeholders but "
            f"{len(example_inputs)} example inputs were given"
        )
    mode = tracing_fake_mode()
    if mode is not None and mode.shape_env is not None:
        return [_in_mode(mode, example) for example in example_inputs]
    fallback = detect_fake_mode(list(example_inputs))
    values = []
    for node, example in zip(placeholders, example_inputs, strict=False):
        value = example_value(node)
        if value is None:
            if isinstance(example, torch.Tensor) and fallback is not None:
                value = fallback.from_tensor(example)
            else:
                value = example
        values.append(value)
    return values


def _in_mode(mode: Any, example: Any) -> Any:
    if isinstance(example, FakeTensor):
        # Already fake (a backend called under another backend): keep it; the
        # piece compiler refakeifies it if its mode differs.
        return example
    if isinstance(example, torch.Tensor):
        with mode:
            return mode.from_tensor(example)
    return example
