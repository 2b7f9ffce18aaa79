"""The check before a swap: does a compiled piece compute what the uncompiled
one does on the inputs of one call (NOTE: [a tiered start], tier.py)?"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from ...compat.pytree import tree_leaves

# (rtol, atol) a swapped piece's outputs must agree within, by dtype; the
# tests' Inductor tolerance for float32, wider for the half types, whose
# fused compiled code rounds less often than eager does.
SWAP_TOLERANCE = {
    torch.float64: (1e-4, 1e-4),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (3e-2, 3e-2),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` of :data:`SWAP_TOLERANCE` for ``dtype``: what a
    compiled piece, and ``stitch run``'s whole model, must agree with eager in."""
    return SWAP_TOLERANCE.get(dtype, (1e-4, 1e-4))


def copy_input(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        out = torch.empty_strided(
            value.shape, value.stride(), dtype=value.dtype, device=value.device
        )
        return out.copy_(value)
    return value


# Ops whose result holds no defined values, and the views that keep it so.
_UNSET = ("empty", "empty_like", "new_empty", "empty_strided", "empty.memory_format")
_VIEWS = ("view", "reshape", "transpose", "permute", "unsqueeze", "squeeze", "t")


def unset_outputs(graph: fx.GraphModule) -> set[int]:
    """The outputs of ``graph`` (flat positions) whose values are never set in
    it: an ``empty`` buffer a splitting op fills next (NOTE: [a tiered start]:
    their contents differ between any two runs, so they are not compared)."""

    def unset(node: Any) -> bool:
        while isinstance(node, fx.Node):
            name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
            if node.op in ("call_function", "call_method") and name in _UNSET:
                return True
            if node.op in ("call_function", "call_method") and name in _VIEWS:
                node = node.args[0]
                continue
            return False
        return False

    output = next(n for n in reversed(graph.graph.nodes) if n.op == "output")
    return {i for i, leaf in enumerate(tree_leaves(output.args[0])) if unset(leaf)}


def differences(got: Any, want: Any, what: str, skip: set[int] = frozenset()) -> str:
    """How ``got`` differs from ``want`` beyond :data:`SWAP_TOLERANCE` ("" if
    not); the flat positions in ``skip`` are not compared."""
    got_leaves, want_leaves = tree_leaves(got), tree_leaves(want)
    if len(got_leaves) != len(want_leaves):
        return f"{len(got_leaves)} {what}s where the piece gives {len(want_leaves)}"
    for i, (g, w) in enumerate(zip(got_leaves, want_leaves, strict=True)):
        if i in skip:
            continue
        if not isinstance(w, torch.Tensor):
            if g != w:
                return f"{what} {i} is {g!r}, not {w!r}"
            continue
        if not isinstance(g, torch.Tensor) or g.shape != w.shape or g.dtype != w.dtype:
            return f"{what} {i} is {_describe(g)}, not {_describe(w)}"
        if not w.is_floating_point():
            if not torch.equal(g, w):
                return f"{what} {i} ({_describe(w)}) holds other values"
            continue
        rtol, atol = tolerance(w.dtype)
        if not torch.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
            diff = (g.double() - w.double()).abs().max().item()
            return (
                f"{what} {i} ({_describe(w)}) differs by up to {diff:.3g} "
                f"(rtol={rtol}, atol={atol})"
            )
    return ""


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"
    return type(value).__name__
