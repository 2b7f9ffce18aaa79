"""The floor of bench/stitching_overhead.py: the straight-line function a person would write.

``floor_source`` writes, for a split graph, the function a person would write
by hand to call its pieces (pieces bound to globals, outputs unpacked, no
``del``), optionally running the attention pieces' ops inline; the benchmark
measures Stitch's emitted function against it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch.fx as fx


class _FloorWriter:
    """Writes the straight-line function a person would write for ``split_gm``."""

    def __init__(self, split_gm: fx.GraphModule, inline_attention: bool = True) -> None:
        self.split_gm = split_gm
        self.inline_attention = inline_attention
        self.globals: dict[str, Any] = {}
        self._global_ids: dict[int, str] = {}
        self.lines: list[str] = []
        self.params: list[str] = []
        self._count = 0

    def fresh(self) -> str:
        self._count += 1
        return f"v{self._count}"

    def bind(self, obj: Any, prefix: str) -> str:
        if id(obj) not in self._global_ids:
            name = f"{prefix}{len(self._global_ids)}"
            self._global_ids[id(obj)] = name
            self.globals[name] = obj
        return self._global_ids[id(obj)]

    def render(self, value: Any, env: dict[fx.Node, str]) -> str:
        if isinstance(value, fx.Node):
            return env[value]
        if isinstance(value, (tuple, list)):
            inner = ", ".join(self.render(v, env) for v in value)
            if isinstance(value, list):
                return f"[{inner}]"
            return f"({inner},)" if len(value) == 1 else f"({inner})"
        if value is None or type(value) in (bool, int, float, str):
            return repr(value)
        return self.bind(value, "_const")

    def write(self) -> str:
        env: dict[fx.Node, str] = {}
        for node in self.split_gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = self.fresh()
                self.params.append(env[node])
            elif node.op == "get_attr":
                env[node] = self.bind(getattr(self.split_gm, node.target), "_const")
            elif node.op == "call_module":
                self._piece(node, env)
            elif node.op == "call_function" and node.target is operator.getitem:
                continue  # unpacked at the call (see _piece)
            elif node.op == "output":
                self.lines.append(f"return {self.render(node.args[0], env)}")
            else:
                raise ValueError(f"unexpected top-level node {node.format_node()}")
        body = "\n".join(f"    {line}" for line in self.lines)
        return f"def floor_fn({', '.join(self.params)}):\n{body}\n"

    def _piece(self, node: fx.Node, env: dict[fx.Node, str]) -> None:
        args = ", ".join(self.render(a, env) for a in node.args)
        module = self.split_gm._modules[node.target]
        installed = self.split_gm.__dict__.get(node.target)
        if installed is None and not self.inline_attention:
            # "floor (calls)": the attention piece is called like any other
            # callable, through its GraphModule's forward (one frame per piece).
            installed = module.forward
        if installed is not None:
            # A compiled piece: call the very callable every variant calls.
            call = f"{self.bind(installed, '_piece')}({args})"
            output = next(n for n in module.graph.nodes if n.op == "output")
            returned = output.args[0]
            if isinstance(returned, (tuple, list)) and not returned:
                self.lines.append(call)
            elif isinstance(returned, (tuple, list)):
                by_index = {
                    u.args[1]: u for u in node.users if u.target is operator.getitem
                }
                names = []
                for index in range(len(returned)):
                    user = by_index.get(index)
                    names.append(self._name(user, env) if user is not None else "_")
                targets = ", ".join(names) + ("," if len(names) == 1 else "")
                self.lines.append(f"{targets} = {call}")
            elif node.users:
                self.lines.append(f"{self._name(node, env)} = {call}")
            else:
                self.lines.append(call)
            return
        # NOTE: [the floor inlines the attention pieces' ops]
        # The floor runs the attention piece's ops inline, with each target bound
        # to a global name: the same work as GraphModule.forward, without its
        # frame or the attribute walk to ``torch.ops.<ns>.<op>.<overload>``.  That
        # is the least any stitching can do, so it is the strictest floor.
        inner: dict[fx.Node, str] = {}
        placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
        for ph, arg in zip(placeholders, node.args, strict=False):
            inner[ph] = self.render(arg, env)
        for n in module.graph.nodes:
            if n.op in ("call_function", "call_method"):
                if n.op == "call_method":
                    fn = f"{self.render(n.args[0], inner)}.{n.target}"
                    call_args = n.args[1:]
                else:
                    fn = self.bind(n.target, "_op")
                    call_args = n.args
                parts = [self.render(a, inner) for a in call_args]
                parts += [f"{k}={self.render(v, inner)}" for k, v in n.kwargs.items()]
                call = f"{fn}({', '.join(parts)})"
                if n.users:
                    inner[n] = self.fresh()
                    self.lines.append(f"{inner[n]} = {call}")
                else:
                    self.lines.append(call)
            elif n.op == "output":
                returned = n.args[0]
                for user in node.users:
                    if user.target is operator.getitem:
                        env[user] = self.render(returned[user.args[1]], inner)
                    else:
                        env[user] = self.render(returned, inner)
            elif n.op != "placeholder":
                raise ValueError(f"unexpected node in a piece: {n.format_node()}")

    def _name(self, node: fx.Node, env: dict[fx.Node, str]) -> str:
        if not node.users:
            return "_"
        env[node] = self.fresh()
        return env[node]


def floor_source(
    split_gm: fx.GraphModule, inline_attention: bool = True
) -> tuple[str, dict[str, Any]]:
    """Source of the hand-written straight-line function and the globals it reads."""
    writer = _FloorWriter(split_gm, inline_attention)
    return writer.write(), writer.globals


def compile_floor(
    split_gm: fx.GraphModule, inline_attention: bool = True
) -> Callable[..., Any]:
    source, namespace = floor_source(split_gm, inline_attention)
    exec(compile(source, "<stitching-floor>", "exec"), namespace)  # noqa: S102
    return namespace["floor_fn"]
