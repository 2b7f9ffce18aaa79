"""What a spawned compile worker imports before it reads a job: the modules
that define the functions and ops its pieces call (NOTE: [a worker imports
the model's modules only for an op it cannot place]), beside Stitch's own
(``spawned_workers.py`` sends them with the job)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .piece_jobs import UnitJob

# Modules every worker imports before it reads its pieces (Stitch's own ops).
ALWAYS = ("stitch.runtime",)


def defining_modules(units: Sequence[UnitJob]) -> list[str]:
    """The modules a worker imports before it unpickles ``units``: Stitch's,
    those of the functions the graphs call and of the custom ops'
    definitions, as far as they can be found, and, where an op's definition
    cannot be found, those of the modules the graphs were traced from (NOTE:
    [a worker imports the model's modules only for an op it cannot place]).
    An op whose module is not imported fails the read, naming the op."""
    found = dict.fromkeys(ALWAYS)
    traced_from: dict[str, None] = {}
    unplaced = False
    for unit in units:
        for node in unit.graph.graph.nodes:
            for _, kind in (node.meta.get("nn_module_stack") or {}).values():
                traced_from[_module_of(kind)] = None
            if node.op == "call_function":
                module = _module_of(node.target)
                found[module] = None
                unplaced |= not module and _namespace(node.target) not in TORCH_OPS
    if unplaced:
        found.update(traced_from)
    return [m for m in found if m and m != "__main__" and not _is_torch(m)]


# NOTE: [a worker imports the model's modules only for an op it cannot place]
# A spawned worker imported the module of every class the graphs were traced
# from, in case one of them registers an op when imported.  For the
# transformers Llama that is transformers' Llama modules: 3.7 s of the first
# job in the worker, before its first piece, and 2.2 s of the decode step's
# worker, both on the last swap's path (a traced idle run on the 2-core
# machine, 2026-12-01), which a forked worker never pays.  A piece's ops are
# aten's and prims', which torch registers, or ops whose definition names its
# module (``torch.library.custom_op``), imported anyway; only an op of
# another namespace without one (``Library.define``, an extension's) may have
# been registered by importing the model, and only then are its modules
# imported.  The pickle itself names no class of the model (NOTE: [the node
# metadata a spawned compile needs]).
TORCH_OPS = frozenset({"aten", "prims"})


def _namespace(target: Any) -> str | None:
    """The namespace of an op (None for another callable)."""
    name = _qualified_name(target)
    return name.partition("::")[0] if name else None


def _qualified_name(target: Any) -> str:
    """``namespace::name`` of an op, an overload or its packet ("" for
    another callable)."""
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name
    return ""


def _module_of(thing: Any) -> str:
    if isinstance(thing, str):  # a qualified class name
        return thing.rpartition(".")[0]
    if isinstance(thing, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        from torch._library.custom_ops import OPDEFS

        opdef = OPDEFS.get(_qualified_name(thing))
        fn = getattr(opdef, "_init_fn", None)
        return getattr(fn, "__module__", "") or ""
    return getattr(thing, "__module__", "") or ""


def _is_torch(module: str) -> bool:
    return module in ("torch", "builtins", "_operator", "operator", "math") or (
        module.startswith("torch.")
    )
