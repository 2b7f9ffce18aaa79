"""One FX node of the split graph or of an inlined piece, written as a Python
expression (``stitch_attention(q, k, v, out)``, ``x.view(4, -1)``, ``pair[0]``)."""

from __future__ import annotations

import keyword
import operator
from collections.abc import Callable
from typing import Any

import torch.fx as fx

from stitch.core.errors import StitchCodegenError


def node_expression(
    n: fx.Node,
    render: Callable[[Any], str],
    name_of: Callable[[fx.Node], str],
    target_expr: Callable[[fx.Node], str],
    top_level: bool,
) -> str:
    """The expression computing ``n``: ``render`` writes an argument,
    ``name_of`` names a node's value, ``target_expr`` names a call target."""
    if n.op == "call_module":
        raise StitchCodegenError(
            "call_module inside an inlined piece cannot be lowered; the "
            "splitting piece must consist of call_function/call_method nodes",
            n,
        )
    if n.op == "call_function" and n.target is operator.getitem:
        if len(n.args) != 2 or n.kwargs:
            raise StitchCodegenError("getitem must take (value, index)", n)
        source, index = n.args
        if top_level and type(index) is not int:
            raise StitchCodegenError(
                f"index {index!r} of a piece output is not an int", n
            )
        if not isinstance(source, fx.Node):
            raise StitchCodegenError(
                f"getitem of a constant {type(source).__name__} is not supported", n
            )
        return f"{name_of(source)}[{render(index)}]"
    if n.op == "call_function":
        args = [render(a) for a in n.args] + kwargs_source(n, render)
        return f"{target_expr(n)}({', '.join(args)})"
    if n.op == "call_method":
        if not isinstance(n.target, str) or not n.target.isidentifier():
            raise StitchCodegenError(
                f"method name {n.target!r} is not a Python identifier", n
            )
        if not n.args:
            raise StitchCodegenError("call_method has no self argument", n)
        rest = [render(a) for a in n.args[1:]] + kwargs_source(n, render)
        return f"{render(n.args[0])}.{n.target}({', '.join(rest)})"
    raise StitchCodegenError(
        f"node kind {n.op!r} is not supported in "
        f"{'the split graph' if top_level else 'an inlined piece'}",
        n,
    )


def kwargs_source(n: fx.Node, render: Callable[[Any], str]) -> list[str]:
    parts = []
    for key, value in n.kwargs.items():
        # 'class' or 'lambda' pass isidentifier() but cannot name a keyword argument.
        if not key.isidentifier() or keyword.iskeyword(key):
            raise StitchCodegenError(
                f"keyword argument {key!r} cannot be written as a Python keyword "
                "argument",
                n,
            )
        parts.append(f"{key}={render(value)}")
    return parts
