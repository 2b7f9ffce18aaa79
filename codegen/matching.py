"""Which FX nodes are splitting ops (``OpMatcher``), and what a graph calls that could be.

A splitting-op entry is one of:

- ``"ns::op"`` / ``"ns::op.overload"``: an op by name.  Besides ``torch.ops``
  overloads and packets, ``"higher_order::name"`` names a higher-order op
  (``torch.ops.higher_order.flex_attention``), and an ``aten`` name also
  matches the torch function Dynamo keeps in its graph for that op:
  ``"aten::scaled_dot_product_attention"`` matches
  ``torch._C._nn.scaled_dot_product_attention`` (which
  ``torch.nn.functional.scaled_dot_product_attention`` is), and
  ``"aten::softmax"`` also ``x.softmax(...)``;
- an op object: ``OpOverload``, ``OpOverloadPacket``, ``HigherOrderOperator``;
- a callable (a Python function, a builtin, a ``Tensor`` method) by object;
- a callable by dotted name, ``"module.function"``.  The name is resolved
  against modules already imported (the model's own code is, by the time its
  graph is split) and never imports anything; a node also matches when its
  target's ``module.qualname`` is that name.

NOTE: [a name matches every form of its op]
Dynamo keeps many torch functions as they are (``call_function`` on a builtin
or on a ``torch.nn.functional`` function) instead of the aten overload a
``make_fx`` trace holds.  A name therefore matches every form the op can take
in a graph, so one config splits a model however it was traced.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, Union

import torch
import torch.fx as fx

SplittingOp = Union[
    str,
    torch._ops.OpOverload,
    torch._ops.OpOverloadPacket,
    torch._ops.HigherOrderOperator,
    Callable[..., Any],
]

_OP_NAME = re.compile(
    r"^(?P<ns>[A-Za-z_][A-Za-z0-9_]*)::(?P<op>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\.(?P<overload>[A-Za-z_][A-Za-z0-9_]*))?$"
)
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parsed splitting-op entry.

    ``kind`` is ``"op"`` (every overload of ``name``), ``"overload"`` (one),
    ``"callable"`` (``obj`` by identity) or ``"dotted"`` (``name``, resolved
    when matching).  ``label`` is how messages and hashes name the entry.
    """

    kind: str
    label: str
    name: str = ""
    overload: str = ""
    obj: Any = dataclasses.field(default=None, compare=False, hash=False)


def entry_label(entry: Any) -> str:
    """The stable name of a splitting-op entry (no object ids): for hashes and messages."""
    if isinstance(entry, str):
        return entry
    return _parse_entry(entry).label


def _parse_entry(entry: Any) -> Entry:
    if isinstance(entry, torch._ops.OpOverload):
        name = entry._schema.name
        return Entry(
            "overload", f"{name}.{entry._overloadname}", name, entry._overloadname
        )
    if isinstance(entry, torch._ops.OpOverloadPacket):
        return Entry("op", entry._qualified_op_name, entry._qualified_op_name)
    if isinstance(entry, torch._ops.HigherOrderOperator):
        name = f"higher_order::{entry.name()}"
        return Entry("op", name, name)
    if isinstance(entry, str):
        m = _OP_NAME.match(entry)
        if m is not None:
            name = f"{m.group('ns')}::{m.group('op')}"
            if m.group("overload") is None:
                return Entry("op", entry, name)
            return Entry("overload", entry, name, m.group("overload"))
        if "::" not in entry and ":" not in entry and _DOTTED.match(entry):
            return Entry("dotted", entry, entry)
        raise ValueError(
            f"splitting op {entry!r} is not of the form 'ns::op' or 'ns::op.overload' "
            "(an op name, e.g. 'aten::scaled_dot_product_attention'), nor a dotted "
            "name 'module.function' of a callable"
        )
    if callable(entry) and not isinstance(entry, (bool, int, float)):
        return Entry(
            "callable", callable_name(entry) or type(entry).__qualname__, obj=entry
        )
    raise ValueError(
        f"splitting op {entry!r} (type {type(entry).__name__}) must be a string "
        "'ns::op[.overload]' or 'module.function', an op (OpOverload, "
        "OpOverloadPacket, HigherOrderOperator) or a callable"
    )


def callable_name(fn: Any) -> str | None:
    """``module.name`` of a function, builtin or Tensor method (None if it has none)."""
    objclass = getattr(fn, "__objclass__", None)
    name = getattr(fn, "__name__", None)
    if (
        name
        and isinstance(objclass, type)
        and issubclass(objclass, torch._C.TensorBase)
    ):
        return f"torch.Tensor.{name}"
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or name
    if module == "_operator":
        module = "operator"
    if module and qualname:
        if (
            module == "torch"
            and qualname.startswith("_VariableFunctionsClass.")
            and name
        ):
            return f"torch.{name}"
        return f"{module}.{qualname}"
    return name


def _torch_function_op(fn: Any) -> str | None:
    """``aten::<name>`` for a torch function Dynamo keeps in its graph, else None."""
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__name__", None)
    if (
        name
        and (module == "torch" or module.startswith("torch."))
        and not module.startswith("torch._ops")
    ):
        return f"aten::{name}"
    return None


def resolve_dotted(name: str) -> Any:
    """The object a dotted name names, from modules already imported (None if none)."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        obj: Any = module
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return None


@dataclasses.dataclass(frozen=True)
class NodeKey:
    """What a node can be matched by: op names, overload, callable, dotted names."""

    op: str | None = (
        None  # "ns::op" (an overload's, a packet's, a HOP's, an aten alias's)
    )
    overload: str | None = None  # set only for an OpOverload target
    exact: bool = True  # False: the overload is chosen at run time (packet, alias)
    target: Any = None
    method: str | None = None  # call_method target
    dotted: tuple[str, ...] = ()


def node_key(node: fx.Node) -> NodeKey | None:
    """How ``node`` can be matched; None for nodes that are never splitting ops."""
    if node.op == "call_method" and isinstance(node.target, str):
        return NodeKey(
            op=f"aten::{node.target}",
            exact=False,
            method=node.target,
            dotted=(f"torch.Tensor.{node.target}",),
        )
    if node.op != "call_function":
        return None
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return NodeKey(
            op=target._schema.name, overload=target._overloadname, target=target
        )
    if isinstance(target, torch._ops.OpOverloadPacket):
        return NodeKey(op=target._qualified_op_name, exact=False, target=target)
    if isinstance(target, torch._ops.HigherOrderOperator):
        return NodeKey(op=f"higher_order::{target.name()}", target=target)
    names = []
    named = callable_name(target)
    if named:
        names.append(named)
    module, qualname = getattr(target, "__module__", None), getattr(
        target, "__qualname__", None
    )
    if module and qualname and f"{module}.{qualname}" not in names:
        names.append(f"{module}.{qualname}")
    return NodeKey(
        op=_torch_function_op(target), exact=False, target=target, dotted=tuple(names)
    )


def _entry_matches(entry: Entry, key: NodeKey) -> bool:
    if entry.kind == "op":
        return key.op == entry.name
    if entry.kind == "overload":
        if key.op != entry.name:
            return False
        # A packet or torch function resolves its overload at run time: any
        # entry for the op counts.
        return not key.exact or key.overload == entry.overload
    if entry.kind == "callable":
        return _callable_matches(entry.obj, key)
    if entry.kind == "dotted":
        if entry.name in key.dotted:
            return True
        obj = resolve_dotted(entry.name)
        if obj is None:
            return False
        if isinstance(
            obj,
            (
                torch._ops.OpOverload,
                torch._ops.OpOverloadPacket,
                torch._ops.HigherOrderOperator,
            ),
        ):
            return _entry_matches(_parse_entry(obj), key)
        return _callable_matches(obj, key)
    return False


def _callable_matches(obj: Any, key: NodeKey) -> bool:
    if key.target is not None and key.target is obj:
        return True
    objclass = getattr(obj, "__objclass__", None)
    return (
        key.method is not None
        and isinstance(objclass, type)
        and issubclass(objclass, torch._C.TensorBase)
        and getattr(obj, "__name__", None) == key.method
    )


@dataclasses.dataclass(frozen=True)
class OpMatcher:
    """Which nodes count as splitting ops (see the module docstring for the entries)."""

    entries: tuple[Entry, ...]

    @classmethod
    def parse(cls, splitting_ops: Iterable[SplittingOp] | None) -> OpMatcher:
        return cls(tuple(_parse_entry(e) for e in splitting_ops or ()))

    def matches(self, node: fx.Node) -> bool:
        """Whether ``node`` matches an entry."""
        key = node_key(node) if self.entries else None
        return key is not None and any(_entry_matches(e, key) for e in self.entries)

    def unmatched(self, gm: fx.GraphModule) -> list[tuple[Entry, list[str]]]:
        """Entries no node of ``gm`` matches, each with close names the graph does call."""
        hit: set[str] = set()
        for node in gm.graph.nodes:
            key = node_key(node)
            if key is None:
                continue
            for entry in self.entries:
                if entry.label not in hit and _entry_matches(entry, key):
                    hit.add(entry.label)
        missing = [e for e in self.entries if e.label not in hit]
        if not missing:
            return []
        present = called_names(gm)
        return [(e, close_names(e.label, present)) for e in missing]


def called_names(gm: fx.GraphModule) -> list[str]:
    """Names an entry could use for the calls in ``gm`` (sorted, no duplicates)."""
    names: set[str] = set()
    for node in gm.graph.nodes:
        key = node_key(node)
        if key is None:
            continue
        if key.op:
            names.add(key.op)
            if key.overload:
                names.add(f"{key.op}.{key.overload}")
        names.update(key.dotted)
    return sorted(names)


def close_names(name: str, present: list[str], n: int = 3) -> list[str]:
    """Names in ``present`` close to ``name``: whole names first, then by last part."""
    found = difflib.get_close_matches(name, present, n=n, cutoff=0.75)
    tail = re.split(r"::|\.", name)[-1]
    by_tail: dict[str, list[str]] = {}
    for p in present:
        by_tail.setdefault(re.split(r"::|\.", p)[-1], []).append(p)
    for t in difflib.get_close_matches(tail, list(by_tail), n=n, cutoff=0.75):
        for p in by_tail[t]:
            if p not in found:
                found.append(p)
    return found[:n]
