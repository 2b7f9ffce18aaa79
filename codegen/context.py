"""Frozen template context: everything the templates loop over, decided in Python."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Statement:
    """One statement, its parts written as one line of source.

    ``kind`` is ``assign`` (``target = value``; ``target`` may be ``a, b, _``),
    ``expr`` (``value`` on its own), ``del`` (``del value``) or ``return``
    (``return value``).  ``comment`` goes on the line above.
    """

    kind: str
    value: str
    target: str = ""
    comment: str = ""


@dataclasses.dataclass(frozen=True)
class FunctionContext:
    name: str
    signature: str
    docstring: str
    body: tuple[Statement, ...]


@dataclasses.dataclass(frozen=True)
class ModuleContext:
    header: tuple[str, ...]
    imports: tuple[str, ...]
    # Module-level bindings of call targets (``stitch_attention = ...``).
    aliases: tuple[Statement, ...]
    functions: tuple[FunctionContext, ...]


@dataclasses.dataclass
class PieceFunction:
    """A module-level function running one or more structurally identical pieces."""

    name: str
    piece: str
    path: str
    signature: str
    body: tuple[Statement, ...]
    shared: int = 0  # how many other pieces call it

    def context(self) -> FunctionContext:
        docstring = f"Inlined piece {self.piece}"
        if self.path:
            docstring += f" ({self.path})"
        if self.shared:
            docstring += f" and {self.shared} identical piece" + "s" * (self.shared > 1)
        return FunctionContext(self.name, self.signature, docstring + ".", self.body)
