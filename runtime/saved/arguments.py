"""The arguments of one saved-forward call: positional and keyword, and the tensors inside objects.

NOTE: [a call's arguments in one tuple]
``aot_compile`` and the input check work on the values of one call in the
forward's parameter order.  A transformers decode step is called by keyword
(``forward(input_ids=ids, past_key_values=cache, use_cache=True)``), so a
:class:`CallArgs` is that tuple of values with the names of the trailing ones
passed by keyword: code that only looks at the values (dynamic dims, the
record's input spec, marking) iterates it as before; code that calls the
forward splits it back (:meth:`CallArgs.split`).

NOTE: [the tensors of an object argument]
An argument that is neither a tensor nor a plain value (a transformers
``StaticCache``) is a tree of attributes Dynamo reads tensors from: the graph
takes them as inputs of their own (``past_key_values.layers[0].keys``).  transformers (5.17
and 5.23 alike) registers no pytree for its caches outside ``torch.export``, and
Dynamo does not need one: it reads the attributes.  :func:`object_tensors`
walks the same attributes (public ``__dict__`` entries, lists and tuples,
in insertion order) and names each tensor by the Python expression that reads
it; the input check checks those the graph reads.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from stitch.core.errors import StitchRuntimeError

# How deep object_tensors looks: StaticCache -> layers -> [i] -> keys is 3.
MAX_DEPTH = 4


class CallArgs(tuple):  # type: ignore[type-arg]
    """A call's values in parameter order; the last ``len(keywords)`` are passed by keyword."""

    keywords: tuple[str, ...]

    def __new__(cls, values: Sequence[Any], keywords: Sequence[str] = ()) -> "CallArgs":
        self = super().__new__(cls, values)
        if len(keywords) > len(self):
            raise StitchRuntimeError(
                f"{len(keywords)} keyword names for {len(self)} values"
            )
        self.keywords = tuple(keywords)
        return self

    @property
    def cut(self) -> int:
        """How many values are passed by position (the keywords' first index)."""
        return len(self) - len(self.keywords)

    def split(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` to call the forward with."""
        cut = self.cut
        return tuple(self[:cut]), dict(zip(self.keywords, self[cut:], strict=True))

    def label(self, position: int) -> str:
        """The value's keyword name, else ``input <position>``."""
        cut = self.cut
        return self.keywords[position - cut] if position >= cut else f"input {position}"

    def like(self, values: Sequence[Any]) -> "CallArgs":
        """Other values for the same parameters."""
        return CallArgs(values, self.keywords)


def split_args(args: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(args, CallArgs):
        return args.split()
    return tuple(args), {}


def call_args(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    example_kwargs: Mapping[str, Any] | None,
) -> CallArgs:
    """The example call as :class:`CallArgs`; a keyword the forward does not take is refused."""
    kwargs = dict(example_kwargs or {})
    params = inspect.signature(type(model).forward).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    positional = [
        n
        for n, p in list(params.items())[1 : 1 + len(example_inputs)]
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    for name in kwargs:
        if name in positional:
            raise StitchRuntimeError(
                f"aot_compile: {name!r} is given both by position and by keyword"
            )
        if not name.isidentifier() or (name not in params and not takes_any):
            raise StitchRuntimeError(
                f"aot_compile: {type(model).__qualname__}.forward takes no "
                f"keyword argument {name!r}"
            )
    return CallArgs((*example_inputs, *kwargs.values()), tuple(kwargs))


def dims_by_position(
    args: CallArgs, requested: Mapping[int | str, Any] | None
) -> dict[int, Any]:
    """``dynamic_dims`` keyed by position or keyword name -> keyed by position in
    ``args`` (each value as given: a list of dims, or ``{dim: name}``)."""
    out: dict[int, Any] = {}
    for key, dims in (requested or {}).items():
        if isinstance(key, str):
            if key not in args.keywords:
                raise StitchRuntimeError(
                    f"dynamic_dims names {key!r}, not one of the keyword arguments "
                    f"{list(args.keywords)}"
                )
            out[args.cut + args.keywords.index(key)] = dims
        else:
            out[key] = dims
    return out


def size_names(
    args: CallArgs, by_position: Mapping[int, Any]
) -> dict[tuple[int, int], str]:
    """``(position, dim) -> name`` for the dims ``dynamic_dims`` named (a mapping
    ``{dim: name}`` instead of a list of dims).

    NOTE: [one size for dims of one name]
    Each dim marked unbacked is a size of its own, which the trace may not
    compare with another: a transformers Llama in the token layout checks
    ``batch_size != position_ids.shape[0]`` and fails the trace when
    ``input_ids`` and ``position_ids`` have two unrelated token counts.  Dims
    given one name are one size (Dynamo's ``shape_id``): the trace knows them
    equal, and the saved forward's input check refuses a call where they are
    not.  The example's sizes of one name must be equal.
    """
    names: dict[tuple[int, int], str] = {}
    first: dict[str, tuple[int, int, int]] = {}
    for position, dims in by_position.items():
        if not isinstance(dims, Mapping):
            continue
        for dim, name in dims.items():
            if not isinstance(name, str) or not name:
                raise StitchRuntimeError(
                    f"dynamic_dims: {args.label(position)} dim {dim} is "
                    f"named {name!r}; a name is a non-empty str"
                )
            a = args[position]
            if not isinstance(a, torch.Tensor):  # dynamic_spec refused it already
                continue
            dim %= a.dim()
            size = int(a.shape[dim])
            seen = first.setdefault(name, (position, dim, size))
            if seen[2] != size:
                raise StitchRuntimeError(
                    f"dynamic_dims: {name!r} names {args.label(seen[0])} dim "
                    f"{seen[1]} (size {seen[2]}) and {args.label(position)} "
                    f"dim {dim} (size {size}); the example's dims of one name "
                    "must be equal"
                )
            names[(position, dim)] = name
    return names


def is_object(value: Any) -> bool:
    """An argument whose tensors are found by :func:`object_tensors` (not a tensor,
    a plain value or a container the input check describes by type)."""
    return (
        not isinstance(value, (torch.Tensor, type, torch.nn.Module))
        and hasattr(value, "__dict__")
        and value.__class__.__module__ != "builtins"
    )


def object_tensors(value: Any, name: str) -> Iterator[tuple[str, torch.Tensor]]:
    """``(expression, tensor)`` for each tensor reachable from ``value`` (NOTE: [the
    tensors of an object argument]); ``name`` is the expression of ``value``."""
    yield from _walk(value, name, 0, set())


def _walk(
    value: Any, path: str, depth: int, seen: set[int]
) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield path, value
        return
    if depth >= MAX_DEPTH or id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]", depth + 1, seen)
    elif is_object(value):
        for attr, item in vars(value).items():
            if attr.isidentifier() and not attr.startswith("_"):
                yield from _walk(item, f"{path}.{attr}", depth + 1, seen)


def resolve(value: Any, expression: str, root: str) -> Any:
    """What ``expression`` (an :func:`object_tensors` path under ``root``) reads from
    ``value``; None when it reads nothing (a missing attribute or index)."""
    rest = expression[len(root) :]
    current = value
    for part in _parts(rest):
        try:
            current = (
                current[int(part[1:-1])]
                if part[0] == "["
                else getattr(current, part[1:])
            )
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return None
    return current


def _parts(rest: str) -> Iterator[str]:
    i = 0
    while i < len(rest):
        end = rest.index("]", i) + 1 if rest[i] == "[" else _next(rest, i + 1)
        yield rest[i:end]
        i = end


def _next(rest: str, start: int) -> int:
    found = [j for j in (rest.find(".", start), rest.find("[", start)) if j >= 0]
    return min(found) if found else len(rest)
