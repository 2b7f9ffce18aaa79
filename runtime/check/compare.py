"""How far one set of values is from another: the largest absolute and relative
error, against the tolerance of its dtype, and the first value beyond it."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import torch

from ..compat.pytree import tree_leaves
from ..pipeline.tiered.controls import tolerance

# NOTE: [the check's tolerance is the swap's]
# A compiled piece is held to what the tiered start holds it to before it
# swaps one in (pipeline/swap_check.py): rtol and atol of 1e-4 for float32
# and float64, 1e-2 for float16 and 3e-2 for bfloat16, whose fused compiled
# code rounds less often than eager does.  A value is beyond tolerance where
# ``|got - want| > atol + rtol * |want|`` for some element (torch.allclose);
# a dtype not listed is held to float32's.  ``tolerance`` is the swap's own.


@dataclasses.dataclass
class Difference:
    """The largest error over some values, and the first value beyond tolerance.

    ``rel`` is normwise: the largest absolute error over the largest magnitude
    of the expected value (an element near zero does not blow it up).
    """

    abs: float = 0.0
    rel: float = 0.0
    # "output 1 (float32[8, 64])" and the like: the first value beyond
    # tolerance ("" when none is).
    first: str = ""

    @property
    def beyond(self) -> bool:
        return bool(self.first)

    def merge(self, other: Difference, where: str = "") -> None:
        """Fold ``other`` in: the larger errors, the earlier first difference."""
        self.abs = max(self.abs, other.abs)
        self.rel = max(self.rel, other.rel)
        if not self.first and other.first:
            self.first = f"{other.first}{where}"


def describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"
    return type(value).__name__


def measure(
    got: Any,
    want: Any,
    what: str,
    skip: Collection[int] = frozenset(),
    *,
    padded: bool = False,
) -> Difference:
    """How ``got`` differs from ``want``, leaf by leaf (``what`` names a leaf:
    "output", "written input"); the leaves at positions ``skip`` are not compared.

    A leaf of another type, shape or dtype is a difference of its own (its
    errors infinite), and so are unequal integers or other values.  Only where
    ``got`` ran padded to a CUDA graph's capture size (``padded``) is a leaf
    longer than expected in its first dimension alone compared on its first
    rows: without padding, extra rows are a difference like any other shape.
    """
    found = Difference()
    got_leaves, want_leaves = tree_leaves(got), tree_leaves(want)
    if len(got_leaves) != len(want_leaves):
        found.abs = found.rel = float("inf")
        found.first = f"{len(got_leaves)} {what}s, not {len(want_leaves)}"
        return found
    for i, (g, w) in enumerate(zip(got_leaves, want_leaves, strict=True)):
        if i not in skip:
            found.merge(_leaf(g, w, f"{what} {i}", padded))
    return found


def _leaf(got: Any, want: Any, name: str, padded: bool) -> Difference:
    if not isinstance(want, torch.Tensor):
        if got == want or got is want:
            return Difference()
        return Difference(
            float("inf"), float("inf"), f"{name} is {got!r}, not {want!r}"
        )
    if (
        padded
        and isinstance(got, torch.Tensor)
        and got.dim() == want.dim() >= 1
        and got.shape[0] > want.shape[0]
        and got.shape[1:] == want.shape[1:]
    ):
        got = got[: want.shape[0]]
    if (
        not isinstance(got, torch.Tensor)
        or got.shape != want.shape
        or got.dtype != want.dtype
    ):
        shown = f"{name} is {describe(got)}, not {describe(want)}"
        return Difference(float("inf"), float("inf"), shown)
    if want.numel() == 0:
        return Difference()
    if not want.is_floating_point() and not want.is_complex():
        if torch.equal(got, want):
            return Difference()
        return Difference(float("inf"), float("inf"), f"{name} ({describe(want)})")
    g, w = got.detach().double(), want.detach().double()
    diff = (g - w).abs()
    # Equal values (infinities of a mask included) and NaN where both are NaN
    # agree; any other NaN is an infinite error.
    same = (g == w) | (g.isnan() & w.isnan())
    diff = torch.where(same, torch.zeros_like(diff), diff)
    diff = torch.where(diff.isnan(), torch.full_like(diff, float("inf")), diff)
    largest = diff.max().item()
    scale = w.abs().nan_to_num(0.0, 0.0, 0.0).max().item()  # finite values
    rel = largest / scale if scale > 0 else (0.0 if largest == 0 else float("inf"))
    rtol, atol = tolerance(want.dtype)
    bound = atol + rtol * w.abs()
    beyond = bool((diff > bound.nan_to_num(float("inf"))).any())
    first = f"{name} ({describe(want)})" if beyond else ""
    return Difference(largest, rel, first)


def copy_inputs(args: Sequence[Any]) -> list[Any]:
    """Copies of the tensors in ``args`` that may be written (everything but
    parameters, which no forward writes), the rest as they are.

    NOTE: [parameters are shared, not copied]
    A piece's inputs hold the model's weights; copying them at every call
    would copy the model per forward.  A parameter is the same object in every
    run, so both runs of a piece read it and neither writes it.
    """
    copies = list(args)
    for i in written(args):
        # clone keeps the strides of a dense tensor (a piece may be compiled for
        # them) and makes an expanded one dense.
        copies[i] = args[i].clone(memory_format=torch.preserve_format)
    return copies


def written(args: Sequence[Any]) -> list[int]:
    """The positions of ``args`` :func:`copy_inputs` copies (those a piece may write)."""
    return [
        i
        for i, a in enumerate(args)
        if isinstance(a, torch.Tensor) and not isinstance(a, torch.nn.Parameter)
    ]
