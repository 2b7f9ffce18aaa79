"""An op's ``torch.library`` schema, from a NamedTuple that declares its arguments
once, and the op's registration with the dispatcher.

NOTE: [an op's arguments, declared once]
Each op here declares its arguments as a NamedTuple (``AttentionCall``,
``PagedCall``): the schema registered with the dispatcher, the torch
implementation, the CUDA launcher and the Triton kernel's arguments all read
its fields, and the callables registered with the dispatcher take the op's
arguments positionally (trailing defaults left out) and build one.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, NamedTuple

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


# NOTE: [attention registered directly]
# torch.library.custom_op wraps every call in Python layers (filling defaults,
# bumping versions) that cost some 20 µs a call on CPU, more than a decode
# layer's GPU time: between CUDA graph replays that is most of the host time.
# Like vLLM's direct_register_custom_op, the schema is defined and the kernels
# are registered directly (a few µs a call); a fake kernel keeps the call one
# node in Dynamo's graph.  The ops write their outputs, so the fake returns
# nothing.


def define_op(
    op: str, op_schema: str, reference: Callable[..., None]
) -> torch.library.Library:
    """Define ``op`` (``namespace::name``) with ``op_schema`` and register
    ``reference`` as its torch implementation and a fake that returns nothing
    (NOTE: [attention registered directly]); the library that holds them."""
    namespace, name = op.split("::")
    lib = torch.library.Library(namespace, "FRAGMENT")
    lib.define(op_schema)
    lib.impl(name, reference, "CompositeExplicitAutograd")
    torch.library.register_fake(op, _writes_only, lib=lib)
    return lib


def register_cuda(op: str, kernel: Callable[..., None]) -> torch.library.Library:
    """Register ``kernel`` for ``op``'s CUDA dispatch key, directly: the
    library that holds it.  torch.library.register_kernel would wrap the kernel
    in a dynamo-disabling decorator, a cost on every call."""
    namespace, name = op.split("::")
    lib = torch.library.Library(namespace, "IMPL")
    lib.impl(name, kernel, "CUDA")
    return lib


def _writes_only(*args: Any) -> None:
    return None
