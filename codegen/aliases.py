"""Call targets the emitted module binds once at module level (``name = value``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


@dataclasses.dataclass
class Alias:
    """A call target bound once at module level: ``name = value``."""

    target: Any
    name: str
    value: str = ""  # filled in on first use


def alias_candidate(target: Any, named: tuple[str | None, str] | None) -> str | None:
    """The alias name a call target is bound to at module level, or None.

    ``torch.ops`` targets are bound (``stitch_attention =
    torch.ops.stitch.attention.default``), as Inductor's wrapper code does: the
    attribute walk then runs once per process instead of once per call.  So are
    targets that live in the constants table, which are read once instead of
    being indexed on every call.
    """
    if isinstance(target, torch._ops.OpOverload):
        ns, op = target._schema.name.split("::", 1)
        overload = target._overloadname
        return f"{ns}_{op}" if overload == "default" else f"{ns}_{op}_{overload}"
    if isinstance(target, torch._ops.OpOverloadPacket):
        ns, op = target._qualified_op_name.split("::", 1)
        return f"{ns}_{op}"
    if named is None:
        return getattr(target, "__name__", None) or type(target).__name__
    return None
