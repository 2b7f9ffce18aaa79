"""Tensors handed to compiled pieces in the layout those were compiled for.

NOTE: [piece inputs restrided to their compiled layout]
Inductor compiles a piece for the strides of its example inputs and checks them
on every call (``assert_size_stride``).  Two kinds of input may come in another
layout than the example's:

- one made by a splitting piece: it comes from an op run eagerly, and its
  example from that op's fake kernel; the two need not agree.  CPU SDPA is
  one: with a mask and a query sliced out of a fused projection (Phi-3's
  ``qkv_proj``), the fake output is contiguous ``[batch, heads, seq, dim]``
  while the flash kernel returns the query's transposed layout, and the next
  piece fails at its first call.  Stock ``torch.compile`` never meets this:
  Inductor lowers SDPA itself.
- one made by another compiled piece whose strides hold an unbacked size (the
  saved forward of transformers' engine has them): Inductor keeps a graph
  output's traced strides only where no unbacked size enters them, and
  otherwise picks its own.  GPT-OSS's rotary ``cos``/``sin`` are one: traced
  as ``[1, tokens, 8]`` with strides ``(8*u, 1, u)`` (a transpose), returned
  contiguous by torch 2.11's Inductor, and refused by the next piece.

So a compiled piece checks each such input against the dense layout its
example had (the order of its strides, known from the split graph, so a warm
start needs no fake propagation; an unbacked size counts as a large one there)
and copies a tensor that differs into that layout.  Tensors that already
match, the usual case and always so for an op that writes into a buffer a
compiled piece laid out, cost one stride comparison per dimension.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from stitch.codegen.fingerprint import example_value

from ..compat.shapes import backed_values

# piece name -> [(argument index, dims from outermost to innermost in memory)]
LayoutChecks = dict[str, list[tuple[int, tuple[int, ...]]]]


def fed_layouts(split_gm: fx.GraphModule, splitting: set[str]) -> LayoutChecks:
    """For each compiled piece, the tensor arguments whose layout it cannot count
    on, and the layout each one's example had (NOTE: [piece inputs restrided to
    their compiled layout])."""
    checks: LayoutChecks = {}
    for node in split_gm.graph.nodes:
        if node.op != "call_module" or node.target in splitting:
            continue
        piece = getattr(split_gm, node.target, None)
        if not isinstance(piece, fx.GraphModule):
            continue
        placeholders = [n for n in piece.graph.nodes if n.op == "placeholder"]
        for index, arg in enumerate(node.args):
            if index >= len(placeholders):
                continue
            producer = _producer(arg)
            if producer is None:
                continue
            example = example_value(placeholders[index])
            if producer not in splitting and not _unbacked_strides(example):
                continue  # a compiled piece returns the strides it was traced with
            order = dense_order(example)
            if order is not None:
                checks.setdefault(node.target, []).append((index, order))
    return checks


def _producer(arg: Any) -> str | None:
    """The piece whose output ``arg`` is (None: not a piece's output)."""
    if not isinstance(arg, fx.Node):
        return None
    if arg.op == "call_function" and arg.target is operator.getitem:
        arg = arg.args[0]
    if isinstance(arg, fx.Node) and arg.op == "call_module":
        return str(arg.target)
    return None


def _unbacked_strides(example: Any) -> bool:
    return isinstance(example, torch.Tensor) and any(
        _hint(s) is None for s in example.stride()
    )


# What an unbacked size counts as when ordering strides: large, as Dynamo's own
# fallback for an unbacked size's hint.
_UNBACKED_SIZE = 8192


def _hint(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, torch.SymInt):
        hint = value.node.hint
        return int(hint) if hint is not None else None
    return None


def _sample(value: Any) -> int | None:
    """``value``'s hint, or with each unbacked size at :data:`_UNBACKED_SIZE`."""
    hint = _hint(value)
    if hint is not None or not isinstance(value, torch.SymInt):
        return hint
    node = value.node
    known = backed_values(node.shape_env)
    expr = node.expr.xreplace(
        {s: known.get(s, _UNBACKED_SIZE) for s in node.expr.free_symbols}
    )
    try:
        return int(expr)
    except TypeError:  # a symbol left that is neither backed nor unbacked
        return None


def dense_order(example: Any) -> tuple[int, ...] | None:
    """The dims of a dense tensor from outermost to innermost in memory (None: not dense)."""
    if not isinstance(example, torch.Tensor) or example.dim() == 0:
        return None
    sizes = [_sample(s) for s in example.shape]
    strides = [_sample(s) for s in example.stride()]
    if None in sizes or None in strides:
        return None
    order = tuple(sorted(range(len(sizes)), key=lambda d: (-strides[d], -d)))
    expected = 1
    for d in reversed(order):
        if sizes[d] != 1 and strides[d] != expected:
            return None  # overlapping, expanded or sliced: not a dense layout
        expected *= sizes[d]
    return order


def _in_order(t: torch.Tensor, order: tuple[int, ...]) -> bool:
    expected = 1
    for d in reversed(order):
        size = t.shape[d]
        if size != 1 and t.stride(d) != expected:
            return False
        expected *= size
    return True


def guard_layouts(
    fn: Callable[..., Any], checks: Sequence[tuple[int, tuple[int, ...]]]
) -> Callable[..., Any]:
    """``fn`` taking the checked arguments in their layouts (``fn`` itself with no checks)."""
    if not checks:
        return fn
    checks = tuple(checks)

    def call(*args: Any) -> Any:
        for index, order in checks:
            t = args[index]
            if not _in_order(t, order):
                args = args[:index] + (_to_order(t, order),) + args[index + 1 :]
        return fn(*args)

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def _to_order(t: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    out = torch.empty_permuted(t.shape, order, dtype=t.dtype, device=t.device)
    return out.copy_(t)
