"""Rendering of FX argument values and call targets as emitted source text.

Literals are written inline and exactly, dtypes, layouts, memory formats and
devices by their torch names (as torch.fx writes them); everything else becomes
a slot in the constants table (``__vllm_consts__[j]``), because ``repr()`` of an
arbitrary object is not valid source.  The emitted header lists what each slot
holds.
"""

from __future__ import annotations

import builtins
import math
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from stitch.core.contract import CONSTS_NAME


class ConstTable:
    """Objects the emitted source references by slot, deduplicated.

    Slots are numbered in order of first use; equal hashable values of the same
    type share a slot, anything else is shared only when it is the same object.
    While ``log`` is a list, every reference appends its slot to it.
    """

    def __init__(self) -> None:
        self.values: list[Any] = []
        # slot -> the graph attribute it was first fetched from, when it was
        # one, and the module whose forward read it (nn_module_stack)
        self.names: dict[int, str] = {}
        self.modules: dict[int, str] = {}
        self._slots: dict[Any, int] = {}
        self.log: list[int] | None = None
        # Set when a rendered value is written with a torch name (torch.float32).
        self.uses_torch = False

    def slot(
        self, value: Any, name: str | None = None, module: str | None = None
    ) -> int:
        key: Any
        if isinstance(value, torch.Tensor) or isinstance(value, torch.nn.Module):
            key = ("id", id(value))
        else:
            try:
                key = ("eq", type(value), value)
                hash(key)
            except TypeError:
                key = ("id", id(value))
        if key not in self._slots:
            self._slots[key] = len(self.values)
            self.values.append(value)
        slot = self._slots[key]
        if name is not None:
            self.names.setdefault(slot, name)
        if module:
            self.modules.setdefault(slot, module)
        if self.log is not None:
            self.log.append(slot)
        return slot

    def ref(
        self, value: Any, name: str | None = None, module: str | None = None
    ) -> str:
        """``__vllm_consts__[j]`` for ``value``; ``name``: the graph attribute it
        is, ``module``: the path of the module that reads it."""
        return f"{CONSTS_NAME}[{self.slot(value, name, module)}]"

    def describe(self) -> list[str]:
        """One line per slot for the emitted header: what the loader puts there."""
        lines = []
        for j, value in enumerate(self.values):
            name, module = self.names.get(j), self.modules.get(j)
            label = f"{name}, in {module}" if name and module else name
            lines.append(
                f"[{j}] {label + ': ' if label else ''}{describe_value(value)}"
            )
        return lines


def describe_value(value: Any) -> str:
    """A short, stable description of a constant (no addresses, no values)."""
    if isinstance(value, torch.Tensor):
        kind = "Parameter" if isinstance(value, torch.nn.Parameter) else "Tensor"
        dtype = str(value.dtype).removeprefix("torch.")
        return f"{kind}({dtype}, {list(value.shape)}, {value.device.type})"
    if isinstance(value, torch.nn.Module):
        return f"module {type(value).__qualname__}"
    if callable(value):
        qualname = getattr(value, "__qualname__", None) or type(value).__qualname__
        return f"{getattr(value, '__module__', None) or '?'}.{qualname}"
    return type(value).__qualname__


def torch_literal(value: Any) -> str | None:
    """Source for a dtype, layout, memory format or device, as torch.fx writes
    them: ``torch.float32``, ``torch.strided``, ``torch.channels_last``,
    ``torch.device("cuda", 0)``; None for anything else."""
    if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
        text = str(value)
        name = text.removeprefix("torch.")
        if name != text and name.isidentifier() and getattr(torch, name, None) is value:
            return text
        return None
    if isinstance(value, torch.device):
        index = "" if value.index is None else f", {value.index}"
        return f'torch.device("{value.type}"{index})'
    return None


def render_float(value: float) -> str:
    """An exact float literal, spelled as black spells it (``1e300``, not ``1e+300``)."""
    if math.isnan(value):
        return 'float("nan")'
    if math.isinf(value):
        return 'float("inf")' if value > 0 else 'float("-inf")'
    text = repr(value)
    if "e" in text:
        # NOTE: [black is imported only to generate code]
        # A warm start runs cached source and generates none; importing black
        # (and jinja2) costs it a quarter of a second, so only the code paths
        # that write source import them.
        from black.numerics import format_scientific_notation

        sign = "-" if text.startswith("-") else ""
        return sign + format_scientific_notation(text.lstrip("-"))
    return text


def render_string(value: str | bytes) -> str:
    """An exact str/bytes literal with black's choice of quotes."""
    # See NOTE: [black is imported only to generate code].
    from black.strings import normalize_string_quotes

    return normalize_string_quotes(repr(value))


def render_value(
    value: Any, name_of: Callable[[fx.Node], str], consts: ConstTable
) -> str:
    """Source text for an argument value; FX nodes become their local names."""
    if isinstance(value, fx.Node):
        return name_of(value)
    kind = type(value)
    if value is None or value is Ellipsis or kind is bool:
        return repr(value) if value is not Ellipsis else "..."
    if kind is int:
        return repr(value)
    if kind is str or kind is bytes:
        return render_string(value)
    if kind is float:
        return render_float(value)
    if kind is slice:
        parts = (value.start, value.stop, value.step)
        return (
            "slice(" + ", ".join(render_value(p, name_of, consts) for p in parts) + ")"
        )
    if kind is list or kind is fx.immutable_collections.immutable_list:
        return "[" + ", ".join(render_value(v, name_of, consts) for v in value) + "]"
    if kind is tuple:
        items = [render_value(v, name_of, consts) for v in value]
        if len(items) == 1:
            return f"({items[0]},)"
        return "(" + ", ".join(items) + ")"
    if kind is dict or kind is fx.immutable_collections.immutable_dict:
        return (
            "{"
            + ", ".join(
                f"{render_value(k, name_of, consts)}: {render_value(v, name_of, consts)}"
                for k, v in value.items()
            )
            + "}"
        )
    if kind is torch.Size and all(type(v) is int for v in value):
        consts.uses_torch = True
        return "torch.Size([" + ", ".join(repr(v) for v in value) + "])"
    literal = torch_literal(value)
    if literal is not None:
        consts.uses_torch = True
        return literal
    return consts.ref(value)


def _resolve(module_name: str, qualname: str) -> Any:
    module = sys.modules.get(module_name)
    if module is None:
        return None
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _is_identifier_path(path: str) -> bool:
    return all(p.isidentifier() for p in path.split("."))


def qualified_target(target: Any) -> tuple[str | None, str] | None:
    """``(module to import or None, expression)`` naming ``target`` in emitted code.

    Returns None when the target cannot be named by an importable path that
    resolves to the very same object; the caller then puts it in the consts table.
    """
    if isinstance(target, torch._ops.OpOverload):
        ns, op = target._schema.name.split("::", 1)
        path = f"torch.ops.{ns}.{op}.{target._overloadname}"
        return ("torch", path) if _is_identifier_path(path) else None
    if isinstance(target, torch._ops.OpOverloadPacket):
        ns, op = target._qualified_op_name.split("::", 1)
        path = f"torch.ops.{ns}.{op}"
        return ("torch", path) if _is_identifier_path(path) else None

    module = getattr(target, "__module__", None)
    name = getattr(target, "__name__", None)
    qualname = getattr(target, "__qualname__", None)
    if module == "builtins" and name and getattr(builtins, name, None) is target:
        return (None, name)
    candidates: list[tuple[str, str]] = []
    if module == "_operator":
        module = "operator"
    if module and qualname:
        candidates.append((module, qualname))
    if module and name:
        candidates.append((module, name))
    objclass = getattr(target, "__objclass__", None)
    if name and objclass is not None and issubclass(objclass, torch._C.TensorBase):
        candidates.append(("torch", f"Tensor.{name}"))
    for mod, path in candidates:
        if mod == "__main__" or "<" in path or not _is_identifier_path(mod):
            continue
        if not _is_identifier_path(path):
            continue
        # The emitted code imports ``mod``: it must be that module itself.
        if _resolve(mod, path) is target:
            return (mod, f"{mod}.{path}")
    return None
