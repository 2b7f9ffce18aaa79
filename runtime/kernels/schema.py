"""An op's ``torch.library`` schema, from a NamedTuple that declares its arguments once.

NOTE: [an op's arguments, declared once]
Each op here declares its arguments as a NamedTuple (``AttentionCall``,
``PagedCall``): the schema registered with the dispatcher, the torch
implementation, the CUDA launcher and the Triton kernel's arguments all read
its fields, and the callables registered with the dispatcher take the op's
arguments positionally (trailing defaults left out) and build one.
"""

from __future__ import annotations

import typing
from typing import NamedTuple

import torch

_SCHEMA_TYPES = {
    torch.Tensor: "Tensor",
    torch.Tensor | None: "Tensor?",
    float: "float",
    bool: "bool",
    int: "int",
}


def schema(name: str, fields: type[NamedTuple], written: tuple[str, ...]) -> str:
    """``name``'s schema for ``torch.library``, from the fields' annotations and
    defaults; a written tensor is aliased as ``Tensor(aN!)`` (``N``: its index)."""
    arguments = []
    hints = typing.get_type_hints(fields)
    for index, field in enumerate(fields._fields):
        kind = _SCHEMA_TYPES[hints[field]]
        if field in written:
            kind = f"Tensor(a{index}!)"
        text = f"{kind} {field}"
        if field in fields._field_defaults:
            text += f"={fields._field_defaults[field]!r}"
        arguments.append(text)
    return f"{name}({', '.join(arguments)}) -> ()"
