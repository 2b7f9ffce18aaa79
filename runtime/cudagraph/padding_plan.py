"""Planning a graph's padding: which arguments are sizes, which inputs are copied, which outputs sliced.

:func:`plan_padding` reads the graph once, when its CUDA graphs are set up;
``padding.py``'s :class:`PaddedRunner` carries the plan out on every call.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx

from stitch.codegen.fingerprint import example_value

from ..compat.pytree import tree_flatten
from ..size import RuntimeSize

log = logging.getLogger("stitch")


class CannotPad(Exception):
    """The graph's inputs or outputs do not have the shape padding needs."""


@dataclasses.dataclass(frozen=True)
class DynamicInput:
    index: int
    name: str
    rest: tuple[int, ...]  # the static dims after the token dim
    dtype: torch.dtype
    device: torch.device
    pad: float


@dataclasses.dataclass(frozen=True)
class PaddingPlan:
    size_index: int  # the argument holding n
    size_indices: tuple[int, ...]  # every runtime-size argument
    dynamic: tuple[DynamicInput, ...]  # tensors whose dim 0 is the token count
    slice_outputs: tuple[bool, ...]  # per output leaf: dim 0 is the token count
    flat_output: bool  # the graph returns a flat tuple/list of values


def input_name(node: fx.Node) -> str:
    """The forward argument a placeholder comes from (``positions``), else its name.

    NOTE: [keyword arguments of a compiled module]
    ``torch.compile(module)`` traces ``module.__call__(*args, **kwargs)``: an
    argument passed by keyword (``model(position_ids=...)``, as transformers
    models are called) comes from ``L['kwargs']['position_ids']``, and is named
    by its keyword as a positional one is by its parameter, so
    ``cudagraph_pad_values`` reads the same however the forward is called.
    """
    source = getattr(node.meta.get("grapharg"), "source", None)
    name = getattr(source, "local_name", None)
    if isinstance(name, str):
        return name
    key = getattr(source, "index", None)
    if getattr(getattr(source, "base", None), "local_name", None) == "kwargs":
        if isinstance(key, str):
            return key
    # NOTE: [placeholder names spell their source]
    # torch's aot_compile hands the backend a graph without Dynamo's grapharg
    # metadata; Dynamo named each placeholder after its source, though
    # (L['positions'] -> l_positions_, L['kwargs']['position_ids'] ->
    # l_kwargs_position_ids_), so a forward argument is still found.
    match = re.fullmatch(r"l_(?:kwargs_)?(\w+)_", node.name)
    return match.group(1) if match else node.name


def _symbol(value: Any) -> Any:
    expr = value.node.expr
    return expr if getattr(expr, "is_Symbol", False) else None


def plan_padding(
    graph: fx.GraphModule,
    example_inputs: Sequence[Any],
    names: Sequence[str],
    size: RuntimeSize | None,
    pad_values: dict[str, float],
) -> PaddingPlan:
    """Which arguments are sizes, which tensors get padded, which outputs sliced.

    Padding needs every symbolic dimension to be the token count: a runtime-size
    argument, or dim 0 of a contiguous input or output whose other dims are
    static.  Raises :class:`CannotPad` otherwise.
    """
    if size is None or size.size_index is None:
        raise CannotPad("the graph has no runtime-size input that every piece shares")
    if len(names) != len(example_inputs):
        raise CannotPad(f"{len(names)} placeholders but {len(example_inputs)} inputs")
    placeholders = [n for n in graph.graph.nodes if n.op == "placeholder"]
    labels = (
        [input_name(n) for n in placeholders]
        if len(placeholders) == len(names)
        else list(names)
    )
    sizes, symbols = _size_inputs(example_inputs, labels)
    if size.size_index not in sizes:
        raise CannotPad(f"the dispatch input {size.input_name} is not a runtime size")
    dynamic = _dynamic_inputs(example_inputs, labels, names, symbols, pad_values)
    slice_outputs, flat = _sliced_outputs(graph, symbols)
    return PaddingPlan(
        size.size_index, tuple(sizes), tuple(dynamic), tuple(slice_outputs), flat
    )


def _size_inputs(
    example_inputs: Sequence[Any], labels: Sequence[str]
) -> tuple[list[int], set[Any]]:
    """The runtime-size arguments' positions, and their symbols."""
    sizes: list[int] = []
    symbols = set()
    for i, value in enumerate(example_inputs):
        if isinstance(value, torch.SymInt):
            symbol = _symbol(value)
            if symbol is None:
                raise CannotPad(f"size input {labels[i]} is {value}, not a plain size")
            sizes.append(i)
            symbols.add(symbol)
    return sizes, symbols


def _token_dim(
    value: torch.Tensor, what: str, symbols: set[Any], *, contiguous: bool
) -> bool:
    """True when dim 0 is the token count; False when all dims are static."""
    shape = list(value.shape)
    dynamic = [d for d, s in enumerate(shape) if isinstance(s, torch.SymInt)]
    if not dynamic:
        return False
    if dynamic != [0] or _symbol(shape[0]) not in symbols:
        raise CannotPad(f"{what} has shape {tuple(shape)}: only dim 0 may be dynamic")
    # An input is copied into a contiguous static buffer: its strides must be
    # those the compiled code expects of it.
    rest = [math.prod(shape[d + 1 :]) for d in range(1, len(shape))]
    if contiguous and list(value.stride()[1:]) != rest:
        raise CannotPad(f"{what} is not contiguous (strides {value.stride()})")
    return True


def _dynamic_inputs(
    example_inputs: Sequence[Any],
    labels: Sequence[str],
    names: Sequence[str],
    symbols: set[Any],
    pad_values: dict[str, float],
) -> list[DynamicInput]:
    """The tensor inputs whose dim 0 is the token count, each with its pad value
    (a warning names the pad values that fit no dynamic input)."""
    dynamic: list[DynamicInput] = []
    for i, value in enumerate(example_inputs):
        if isinstance(value, torch.Tensor) and _token_dim(
            value, f"input {labels[i]}", symbols, contiguous=True
        ):
            pad = pad_values.get(labels[i], pad_values.get(names[i], 0))
            dynamic.append(
                DynamicInput(
                    i,
                    labels[i],
                    tuple(int(s) for s in value.shape[1:]),
                    value.dtype,
                    value.device,
                    pad,
                )
            )
    unused = sorted(
        set(pad_values) - {d.name for d in dynamic} - {names[d.index] for d in dynamic}
    )
    if unused:
        log.warning(
            "stitch: cudagraph_pad_values names %s, which are not dynamic inputs of "
            "this graph (dynamic inputs: %s)",
            unused,
            [d.name for d in dynamic],
        )
    return dynamic


def _sliced_outputs(
    graph: fx.GraphModule, symbols: set[Any]
) -> tuple[list[bool], bool]:
    """Per output leaf, whether dim 0 is the token count (sliced back to ``n``);
    and whether the graph returns a flat tuple or list of values."""
    output = next(n for n in graph.graph.nodes if n.op == "output")
    leaves, _ = tree_flatten(output.args[0])
    slice_outputs = []
    for j, leaf in enumerate(leaves):
        value = example_value(leaf) if isinstance(leaf, fx.Node) else leaf
        if isinstance(value, torch.SymInt):
            raise CannotPad(f"output {j} is a runtime size ({value})")
        if isinstance(leaf, fx.Node) and value is None:
            raise CannotPad(f"output {j} ({leaf.name}) has no example value")
        slice_outputs.append(
            isinstance(value, torch.Tensor)
            and _token_dim(value, f"output {j}", symbols, contiguous=False)
        )
    result = output.args[0]
    flat = isinstance(result, (tuple, list)) and not any(
        isinstance(r, (tuple, list, dict)) for r in result
    )
    return slice_outputs, flat
