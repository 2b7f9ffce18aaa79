"""A saved forward's input signatures: described from Dynamo's graph, checked in Python.

``describe`` turns the example inputs (and what the backend saw of them) into
the :class:`InputSignature` the emitted check is generated from;
``tensor_guards`` builds the C++ guard the emitted check calls; ``mismatches``
is the slow path's diagnosis, argument by argument (see NOTE: [what a saved
forward does with an input it was not compiled for] in ``input_mismatch.py``).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Sequence
from typing import Any

import torch

from stitch.codegen.input_check import (
    InputSignature,
    ObjectInput,
    TensorInput,
    ValueInput,
    symbol_order,
)

from ..compat.dynamo import tensor_guards as cpp_tensor_guards
from ..pipeline.api import GraphInput
from .arguments import is_object, object_tensors, resolve

# -- describing inputs ----------------------------------------------------------------


def forward_params(model: torch.nn.Module, count: int) -> tuple[str, ...]:
    """``self`` and the names of the forward's first ``count`` positional
    parameters; those ``*args`` takes are ``args_0``, ``args_1``, ..."""
    named: list[str] = []
    params = list(inspect.signature(type(model).forward).parameters.values())[1:]
    for p in params:
        if len(named) == count:
            break
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            named += [f"{p.name}_{i}" for i in range(count - len(named))]
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            named.append(p.name)
    named += [f"arg{i}" for i in range(len(named), count)]
    return ("self", *named)


def describe(
    names: Sequence[str],
    args: Sequence[Any],
    dims: Sequence[Sequence[int]],
    graph: Sequence[GraphInput],
) -> InputSignature:
    """The signature ``args`` were compiled with; sizes and writes from Dynamo's graph."""
    by_id = {id(g.example): g for g in graph}
    symbols: dict[str, str] = {}
    inputs: list[Any] = []
    for i, (name, a, dyn) in enumerate(zip(names, args, dims, strict=False)):
        if isinstance(a, torch.Tensor):
            inputs.append(_tensor(name, a, dyn, by_id.get(id(a)), symbols, f"arg{i}"))
        elif is_object(a):
            # NOTE: [the tensors of an object argument] (arguments.py): those
            # the graph reads.
            leaves = tuple(
                _tensor(path, t, (), by_id[id(t)], symbols, f"arg{i}")
                for path, t in object_tensors(a, name)
                if id(t) in by_id
            )
            cls = type(a)
            inputs.append(ObjectInput(name, cls.__module__, cls.__qualname__, leaves))
        else:
            value = repr(a) if a is None or type(a) in (bool, int, float, str) else None
            inputs.append(ValueInput(name, type(a).__name__, value))
    return InputSignature(tuple(inputs))


def _tensor(
    name: str,
    a: torch.Tensor,
    dyn: Sequence[int],
    found: GraphInput | None,
    symbols: dict[str, str],
    prefix: str,
) -> TensorInput:
    raw = found.sizes if found is not None else None
    if raw is None or len(raw) != a.dim():
        raw = tuple(f"{prefix}_{d}" if d in dyn else s for d, s in enumerate(a.shape))
    else:
        # NOTE: [a size Dynamo made dynamic by itself]
        # Dynamo makes a size that changed between compiles of the same code
        # in this process dynamic (automatic dynamic shapes): a backed symbol,
        # which its guards keep off 0 and 1.  The saved forward runs without
        # them, so such a size is checked as the example's; a dim asked for
        # (unbacked: every size) stays dynamic.
        raw = tuple(
            int(a.shape[d]) if _backed(s) and d not in dyn else s
            for d, s in enumerate(raw)
        )
    sizes = tuple(
        symbols.setdefault(s, f"n{len(symbols)}") if isinstance(s, str) else s
        for s in raw
    )
    contiguous = a.is_contiguous()
    if contiguous:
        strides = contiguous_strides(sizes)
    else:
        dynamic = any(isinstance(s, str) for s in sizes)
        strides = tuple(None if dynamic else s for s in a.stride())
    return TensorInput(
        name,
        str(a.dtype).removeprefix("torch."),
        str(a.device),
        sizes,
        strides,
        contiguous,
        bool(found is not None and found.mutated),
        found.index_bound if found is not None else None,
    )


def _backed(size: int | str) -> bool:
    return isinstance(size, str) and re.fullmatch(r"s\d+", size) is not None


def contiguous_strides(sizes: Sequence[int | str]) -> tuple[int | None, ...]:
    """Row-major strides; None where one depends on a dynamic size."""
    strides: list[int | None] = []
    step: int | None = 1
    for s in reversed(sizes):
        strides.append(step)
        step = step * s if step is not None and isinstance(s, int) else None
    return tuple(reversed(strides))


def tensor_guards(*entries: tuple[Any, ...]) -> Any:
    """The guard of one signature of the emitted check (C++; no Dynamo import).

    Per tensor ``(name, dtype, device, sizes, strides[, contiguous])``.  Where a
    size is a symbol (``"n0"``), a :class:`SizedGuards` (NOTE: [a guard per token
    count] in codegen/input_check.py); else one ``TensorGuards``, None for a
    size or stride not checked (the form of checks saved before the symbols).
    """
    if any(isinstance(s, str) for e in entries for s in e[3]):
        return SizedGuards(entries)
    examples = [_example(e[1], e[2], e[3]) for e in entries]
    return static_guards(examples, [e[3] for e in entries], [e[4] for e in entries])


def static_guards(
    examples: Sequence[Any],
    sizes: Sequence[Sequence[int | None]],
    strides: Sequence[Sequence[int | None]],
) -> Any:
    """One ``TensorGuards`` from ``examples``, None for a size or stride not checked."""
    return cpp_tensor_guards(
        *examples,
        dynamic_dims_sizes=[list(s) for s in sizes],
        dynamic_dims_strides=[list(s) for s in strides],
    )


class _Never:
    """The guard of sizes no tensor can have (a size read failed): never passes."""

    @staticmethod
    def check(*_: Any) -> bool:
        return False


NEVER = _Never()


class SizedGuards(dict):  # type: ignore[type-arg]
    """Per value of a signature's dynamic sizes, a ``TensorGuards`` with all sizes static.

    Indexed by the value of the one dynamic size, or a tuple of them in symbol
    order (``n0``, ``n1``, ...); a guard is built on the first index with each
    value.  Contiguous tensors get their strides for those sizes.  At most
    ``LIMIT`` values are kept (a server sees a bounded set of token counts);
    beyond that each new value's guard is built per call.
    """

    LIMIT = 8192

    def __init__(self, entries: Sequence[tuple[Any, ...]]) -> None:
        super().__init__()
        self.entries = tuple(entries)
        found = {s for e in entries for s in e[3] if isinstance(s, str)}
        self.symbols = sorted(found, key=symbol_order)
        self.examples = [
            _example(e[1], e[2], [None if isinstance(s, str) else s for s in e[3]])
            for e in self.entries
        ]

    def __missing__(self, key: Any) -> Any:
        values = key if isinstance(key, tuple) else (key,)
        if len(values) != len(self.symbols) or not all(
            type(v) is int and v >= 0 for v in values
        ):
            return NEVER
        guard = self.build(dict(zip(self.symbols, values, strict=True)), None)
        if len(self) < self.LIMIT:
            self[key] = guard
        return guard

    def build(
        self, values: dict[str, int], examples: Sequence[torch.Tensor] | None
    ) -> Any:
        sizes, strides = [], []
        for e in self.entries:
            concrete = [values[s] if isinstance(s, str) else s for s in e[3]]
            sizes.append(concrete)
            contiguous = len(e) > 5 and e[5]
            strides.append(contiguous_strides(concrete) if contiguous else e[4])
        return static_guards(examples or self.examples, sizes, strides)

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> None:
        """The guard of these tensors' sizes, from them (what the C++ guard adds to
        dtype, sizes and strides: dispatch keys, requires_grad)."""
        values: dict[str, int] = {}
        for e, t in zip(self.entries, tensors, strict=True):
            for s, n in zip(e[3], t.shape, strict=False):
                if isinstance(s, str):
                    values.setdefault(s, int(n))
        key = tuple(values[s] for s in self.symbols)
        self[key[0] if len(key) == 1 else key] = self.build(values, list(tensors))


def in_range(t: torch.Tensor, high: int) -> bool:
    """Whether every value of ``t`` is in ``[0, high)`` (the emitted check's
    ``__stitch_in_range__``, for token ids).

    NOTE: [reading a few token ids]
    A decode step has a few ids: reading them as a list costs about a third of
    two reductions with their host reads (``bench/token_bounds.py``).
    """
    if t.numel() <= 32:
        # A decode step's ids are [batch, 1] when called the transformers way.
        values = t.tolist() if t.dim() == 1 else t.reshape(-1).tolist()
        return not values or (min(values) >= 0 and max(values) < high)
    return t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) < high)


def _example(dtype: str, device: str, sizes: Sequence[Any]) -> Any:
    shape = [2 if s is None else s for s in sizes]
    return torch.empty_strided(
        shape, contiguous_strides(shape), dtype=getattr(torch, dtype), device=device
    )


# -- diagnosing a mismatch ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mismatch:
    kind: str  # type, dtype, device, rank, size, layout, relation, bounds, value
    name: str
    expected: str
    given: str

    def __str__(self) -> str:
        return f"{self.name}: expected {self.expected}, got {self.given}"


def mismatches(sig: InputSignature, args: Sequence[Any]) -> list[Mismatch]:
    out: list[Mismatch] = []
    seen: dict[str, tuple[str, int, int]] = {}
    for spec, a in zip(sig.inputs, args, strict=False):
        if isinstance(spec, ValueInput):
            if type(a).__name__ != spec.type or (
                spec.value is not None and repr(a) != spec.value
            ):
                out.append(Mismatch("value", spec.name, spec.describe(), repr(a)[:60]))
            continue
        if isinstance(spec, ObjectInput):
            cls = type(a)
            if (cls.__module__, cls.__qualname__) != (spec.module, spec.qualname):
                got = f"{cls.__module__}.{cls.__qualname__}"
                out.append(Mismatch("type", spec.name, spec.describe(), got))
                continue
            for leaf in spec.tensors:
                value = resolve(a, leaf.name, spec.name)
                _tensor_mismatches(leaf, value, out, seen)
            continue
        _tensor_mismatches(spec, a, out, seen)
    return out


def _tensor_mismatches(
    spec: TensorInput,
    a: Any,
    out: list[Mismatch],
    seen: dict[str, tuple[str, int, int]],
) -> None:
    if not isinstance(a, torch.Tensor):
        out.append(Mismatch("type", spec.name, "a tensor", type(a).__name__))
        return
    dtype = str(a.dtype).removeprefix("torch.")
    if dtype != spec.dtype:
        out.append(Mismatch("dtype", spec.name, spec.dtype, dtype))
    if str(a.device) != spec.device:
        out.append(Mismatch("device", spec.name, spec.device, str(a.device)))
    if a.dim() != len(spec.sizes):
        out.append(
            Mismatch(
                "rank",
                spec.name,
                f"rank {len(spec.sizes)}",
                f"rank {a.dim()} (shape {list(a.shape)})",
            )
        )
        return
    for d, (want, got) in enumerate(zip(spec.sizes, a.shape, strict=False)):
        if isinstance(want, int) and want != got:
            out.append(Mismatch("size", spec.name, f"shape[{d}] == {want}", str(got)))
        elif isinstance(want, str):
            if want in seen and seen[want][2] != got:
                other, od, osize = seen[want]
                out.append(
                    Mismatch(
                        "relation",
                        spec.name,
                        f"shape[{d}] == {other}.shape[{od}] (one size {want})",
                        f"{got} and {osize}",
                    )
                )
            seen.setdefault(want, (spec.name, d, got))
    if spec.index_bound is not None and spec.device == "cpu" and a.numel():
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= spec.index_bound:
            out.append(
                Mismatch(
                    "bounds",
                    spec.name,
                    f"values in [0, {spec.index_bound})",
                    f"values from {lo} to {hi}",
                )
            )
    # The layout of these sizes (a wrong size is reported as one already).
    strides = contiguous_strides(list(a.shape)) if spec.contiguous else spec.strides
    if any(w != g for w, g in zip(strides, a.stride(), strict=False) if w is not None):
        if not (spec.contiguous and a.numel() <= 1):
            out.append(
                Mismatch("layout", spec.name, spec.describe(), f"strides {a.stride()}")
            )


def written(sig: InputSignature, found: Sequence[Mismatch]) -> bool:
    """Whether a mismatched tensor is one the forward writes into (an object's
    tensors included: a cache is written in place, never copied)."""
    tensors = [i for i in sig.inputs if isinstance(i, TensorInput)]
    for i in sig.inputs:
        if isinstance(i, ObjectInput):
            tensors.extend(i.tensors)
    mutated = {t.name for t in tensors if t.mutated}
    return any(m.name in mutated for m in found)
