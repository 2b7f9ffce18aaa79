"""Frozen template context: everything the templates loop over, decided in Python."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Statement:
    """One line of a function body.

    ``kind`` is ``assign`` (``target = value``), ``expr`` (``value`` on its own),
    ``del`` (``del value``) or ``return`` (``return value``).
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
    functions: tuple[FunctionContext, ...]
