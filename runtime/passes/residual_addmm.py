"""Keep a residual add out of its GEMM: the ``addmm(x, a, b)`` Inductor folded from
``x + a @ b``, ``x`` as large as the product, becomes ``add(x, mm(a, b))`` again.
Stitch runs it on every piece.

NOTE: [a piece's residual add stays out of its GEMM]
Inductor's post-grad pattern ``addmm`` (torch/_inductor/fx_passes/post_grad.py)
folds ``add(mm(a, b), x)`` into ``addmm(x, a, b)`` unless, on a GPU, every use of
the sum is pointwise (``should_prefer_unfused_addmm``).  In a whole decoder graph
each residual sum feeds only the next RMSNorm and the next residual add, so it
stays an add, which Inductor fuses into the RMSNorm's kernel.  In a piece the
last sum of a layer is also a piece output (the residual carried past the
attention), a use that is not pointwise, so it is folded; and as the patterns
are applied from the last node back, the sum before it (the attention's
residual add) now feeds an addmm and is folded too.  On CUDA, ATen's addmm into
a new buffer copies ``x`` there before the GEMM adds to it (only a 1-D bias goes
through cuBLASLt's epilogue): two device-to-device copies per layer that the
whole graph does not make (30 per decode step of a 16-layer llama on an H200,
docs/gpu/h200_window_4.md).  Unfolding them gives back the whole graph's adds,
rounded as eager rounds them (the product, then the sum).  Only Inductor's
folds are unfolded (the node's ``original_aten`` is the add it was, or, on
torch 2.11, it carries no trace of the model's own:
:func:`folded_by_inductor`): an addmm the model wrote keeps its one rounding,
and a bias (1-D) its copy-free epilogue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch._ops import OpOverload
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .base import InductorPass

aten = torch.ops.aten
ADD = aten.add.Tensor.name()  # what Inductor folds: "aten::add.Tensor"
ADDMM = aten.addmm.default.name()


class UnfuseResidualAddmm(InductorPass):
    """Unfold each addmm Inductor folded from an add whose addend is as large as
    its output, on ``devices``.

    ``unfused`` counts the rewrites made by this object so far (for tests and logs).
    """

    name = "UnfuseResidualAddmm"

    def __init__(self, devices: Sequence[str] = ("cuda",)) -> None:
        self.devices = tuple(devices)
        self.unfused = 0

    def options(self) -> dict[str, Any]:
        return {"devices": list(self.devices)}

    def __call__(self, graph: fx.Graph) -> None:
        for node in graph.find_nodes(op="call_function", target=aten.addmm.default):
            if not self.is_residual(node):
                continue
            x, a, b = node.args
            with graph.inserting_before(node):
                mm = graph.call_function(aten.mm.default, (a, b))
                add = graph.call_function(aten.add.Tensor, (x, mm))
            mm_val = aten.mm.default(a.meta["val"], b.meta["val"])
            mm.meta.update(node.meta, val=mm_val, original_aten=aten.mm.default)
            add.meta.update(node.meta, val=aten.add.Tensor(x.meta["val"], mm_val))
            node.replace_all_uses_with(add)
            graph.erase_node(node)
            self.unfused += 1

    def is_residual(self, node: fx.Node) -> bool:
        """Whether ``node`` (an addmm) is Inductor's fold of an add of a tensor
        on one of ``devices`` that has the product's own shape."""
        if not folded_by_inductor(node):
            return False
        if len(node.args) != 3 or any(v != 1 for v in node.kwargs.values()):
            return False
        vals = [
            n.meta.get("val") if isinstance(n, fx.Node) else None for n in node.args
        ]
        xv, out = vals[0], node.meta.get("val")
        if not all(isinstance(v, torch.Tensor) for v in (*vals, out)):
            return False
        if xv.device.type not in self.devices:
            return False
        return xv.dim() == out.dim() == 2 and all(
            statically_known_true(s == t)
            for s, t in zip(xv.shape, out.shape, strict=True)
        )


# Meta that a node traced from the model carries and a pattern's replacement
# made by torch 2.11 does not (2.13 gives it the add's).
TRACED_META = ("from_node", "source_fn_stack", "stack_trace", "seq_nr")


def folded_by_inductor(node: fx.Node) -> bool:
    """Whether ``node`` (an addmm) is a pattern's replacement of an add.

    On torch 2.13 the replacement takes the add's meta: its
    ``original_aten`` is the add.  Compared by name: it need not be
    ``aten.add.Tensor`` itself (on torch 2.13 it is another object of that
    overload, and ``==`` is ``is``).  Torch 2.11 (the GPU image's) gives it
    its own trace's meta alone: ``original_aten`` the addmm and none of
    ``TRACED_META``, which an addmm traced from the model carries.
    """
    original = node.meta.get("original_aten")
    if not isinstance(original, OpOverload):
        return False
    if original.name() == ADD:
        return True
    return original.name() == ADDMM and not any(k in node.meta for k in TRACED_META)
