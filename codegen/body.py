"""One function of the emitted source under construction: its statements, the
names each reads, and the ``del`` statements that free values."""

from __future__ import annotations

from typing import Any

import torch.fx as fx

from stitch.core.errors import StitchCodegenError

from .context import Statement
from .naming import Namespace
from .readable import tidy
from .values import ConstTable, render_value


class FunctionBody:
    """The statements of one function, with the names each one reads.

    ``body()`` adds the ``del`` statements (see NOTE below).
    """

    def __init__(self, names: Namespace, consts: ConstTable, where: str) -> None:
        self.local = names
        self.consts = consts
        self.where = where
        self.names: dict[fx.Node, str] = {}
        self.params: list[str] = []
        self.unpacked: set[fx.Node] = set()
        self._lines: list[tuple[Statement, frozenset[str]]] = []
        self._bound: dict[str, None] = {}  # in binding order
        self._reads: set[str] = set()
        # Indices of statements that close a profiling range (NOTE: [the
        # profiling variant] in execution.py): a del goes after them.
        self._range_ends: set[int] = set()

    def name_of(self, node: fx.Node) -> str:
        try:
            name = self.names[node]
        except KeyError:
            raise StitchCodegenError(
                f"argument refers to node '{node.name}', which is not defined before "
                f"its use in {self.where}",
                node,
            ) from None
        self._reads.add(name)
        return name

    def render(self, value: Any) -> str:
        return render_value(value, self.name_of, self.consts)

    def param(self, node: fx.Node, candidate: str | None = None) -> None:
        """A parameter for placeholder ``node``, named ``candidate`` (see NOTE:
        [names from the model's paths] in readable.py), else readably after it."""
        self.names[node] = self.local.create(candidate or tidy(node.name))
        self.params.append(self.names[node])

    def bind(self, node: fx.Node, candidate: str) -> str:
        name = self.names[node] = self.local.create(tidy(candidate))
        self._bound[name] = None
        return name

    def rebind(self, node: fx.Node, name: str) -> str:
        """Bind ``node`` to ``name``, a name this body bound (:meth:`is_bound`)
        whose value the statement being built reads for the last time (see
        NOTE below)."""
        self.names[node] = name
        return name

    def is_bound(self, name: str) -> bool:
        """Whether a statement of this body bound ``name`` (not a parameter)."""
        return name in self._bound

    def emit(self, statement: Statement, *, range_end: bool = False) -> None:
        if range_end:
            self._range_ends.add(len(self._lines))
        self._lines.append((statement, frozenset(self._reads)))
        self._reads = set()

    def body(self) -> tuple[Statement, ...]:
        # NOTE: [del what frees memory]
        # A value a statement bound is released right after its last reader, as
        # FX's own codegen does, so activations are freed between pieces.
        # Parameters are never deleted: the caller still holds them, so a del
        # frees nothing.  Nor is anything deleted right before the return,
        # which releases every local anyway.  A name rebound by the statement
        # that reads its old value last (``x = submod_2(x)``) needs no del: the
        # assignment releases the old value as the call returns, when a del
        # would.  The del of such a name follows its last value's last reader.
        last_read: dict[str, int] = {}
        for i, (_, reads) in enumerate(self._lines):
            for name in reads:
                last_read[name] = i
        dead_after: dict[int, list[str]] = {}
        for name in self._bound:
            if name in last_read:
                at = last_read[name]
                if at + 1 in self._range_ends:
                    at += 1
                dead_after.setdefault(at, []).append(name)
        body: list[Statement] = []
        for i, (statement, _) in enumerate(self._lines):
            body.append(statement)
            dead = dead_after.get(i)
            following = self._lines[i + 1][0] if i + 1 < len(self._lines) else None
            if dead and following is not None and following.kind != "return":
                body.append(Statement("del", ", ".join(dead)))
        return tuple(body)
