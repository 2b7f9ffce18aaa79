"""Names for the emitted function's size parameters: the input dimension each one is.

NOTE: [every size gets a name]
Dynamo passes each dynamic size in as a SymInt placeholder named after its
symbol (``s72``, ``u0``), and several placeholders can stand for one size:
with ``mark_unbacked`` on ``input_ids`` and ``positions``, ``u0``
(``L['input_ids'].size()[0]``) and ``u1`` (``L['positions'].size()[0]``) both
carry the expression ``u1`` once Dynamo has found them equal.  A name given
per expression would leave one of them raw, so each placeholder is named
from where Dynamo took it, its source: a dimension of the preferred token-ids
tensor (``input_ids`` before ``positions``, in :data:`TOKEN_IDS` order, not
graph order) is ``num_tokens`` (``batch_size``, ``seq_len`` for 2-D ids);
another tensor's is ``<name>_len`` (1-D) or ``<name>_size<d>``.  A graph
without sources (``make_fx``'s) matches its size placeholders to the example
shapes of its tensor inputs, taken in the same order; a size neither
explains is ``size_<k>``.  Each name comes with where it comes from
(``input_ids.size(0)``), for the header's table.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx

from .fingerprint import example_value
from .sources import module_path, source_name, source_text

TOKEN_IDS = ("input_ids", "ids", "tokens", "token_ids", "positions", "position_ids")
# A size placeholder Dynamo named after its symbol; any other name is kept
# unless the token ids explain it (a size one piece hands to the next).
_RAW_SYMBOL = re.compile(r"[su]\d+")
# L['input_ids'].size()[0], L['x'].stride()[1], L['x'].storage_offset()
_DIMENSION = re.compile(
    r"(?P<base>.+)\.(?:(?P<kind>size|stride)\(\)\[(?P<dim>\d+)\]|storage_offset\(\))"
)


@dataclasses.dataclass(frozen=True)
class SizeName:
    """A size parameter's name and the input dimension it is (``input_ids.size(0)``;
    empty where no input explains it)."""

    name: str
    origin: str


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """A tensor input as sizes are named after it."""

    name: str  # its readable name: input_ids, layers_0_self_attn_k_cache
    text: str  # as the header writes it: input_ids, self.layers.0.k_cache
    ndim: int | None


def size_names(
    placeholders: Sequence[fx.Node],
    names: dict[str, str],
    texts: dict[str, str] | None = None,
) -> dict[str, SizeName]:
    """NOTE: [every size gets a name]: a :class:`SizeName` per size placeholder
    (``names``: the readable names of the others; ``texts``: how the header
    writes those whose Dynamo source is not kept, ``input_ids``)."""
    sizes = [p for p in placeholders if _symbol(p) is not None]
    if not sizes:
        return {}
    tensors = _tensors(placeholders, names, texts or {})
    token = _token_ids(list(tensors.values()))
    out: dict[str, SizeName] = {}
    for p in sizes:
        named = _from_source(p, tensors, token)
        if named is not None:
            out[p.name] = named
    _from_shapes(sizes, placeholders, tensors, token, out)
    k = 0
    for p in sizes:
        if p.name not in out and _RAW_SYMBOL.fullmatch(p.name):
            out[p.name] = SizeName(f"size_{k}", "")
            k += 1
    return out


def _symbol(node: fx.Node) -> Any:
    """The sympy expression of a SymInt placeholder's example value, else None."""
    value = example_value(node)
    if not isinstance(value, torch.SymInt):
        return None
    return getattr(getattr(value, "node", None), "expr", None)


def _tensors(
    placeholders: Sequence[fx.Node], names: dict[str, str], texts: dict[str, str]
) -> dict[str, _Tensor]:
    """The tensor placeholders by name and, where Dynamo kept it, by source."""
    out: dict[str, _Tensor] = {}
    for p in placeholders:
        shape = getattr(example_value(p), "shape", None)
        if shape is None:
            continue
        source = source_name(p)
        # A saved forward's graph (aot_compile) keeps no source: the header
        # spells Dynamo's name as a path, as a torch.compile's would.
        text = (source_text(source) if source else None) or texts.get(p.name, p.name)
        tensor = _Tensor(names.get(p.name, p.name), text, len(shape))
        out[p.name] = tensor
        if source:
            out.setdefault(source, tensor)
    return out


def _token_ids(tensors: list[_Tensor]) -> _Tensor | None:
    """The preferred token-ids tensor: the first by :data:`TOKEN_IDS` order."""
    found = [t for t in tensors if t.name in TOKEN_IDS]
    return min(found, key=lambda t: TOKEN_IDS.index(t.name), default=None)


def _dimension_name(tensor: _Tensor, dim: int, token: _Tensor | None) -> str:
    if tensor is token and tensor.ndim == 1 and dim == 0:
        return "num_tokens"
    if tensor is token and tensor.ndim == 2:
        return ("batch_size", "seq_len")[dim]
    if tensor.ndim == 1 and dim == 0:
        return f"{tensor.name}_len"
    return f"{tensor.name}_size{dim}"


def _from_source(
    p: fx.Node, tensors: dict[str, _Tensor], token: _Tensor | None
) -> SizeName | None:
    """The name of a size placeholder whose Dynamo source says what it measures."""
    source = source_name(p)
    if source is None:
        return None
    m = _DIMENSION.fullmatch(source)
    if m is None:  # an int argument Dynamo made dynamic: L['n']
        path, text = module_path(source), source_text(source)
        return SizeName(path.replace(".", "_"), text) if path and text else None
    base = m.group("base")
    tensor = tensors.get(base)
    if tensor is None:  # a tensor no placeholder holds
        path, text = module_path(base), source_text(base)
        if not path or not text:
            return None
        tensor = _Tensor(path.replace(".", "_"), text, None)
    if m.group("kind") is None:
        return SizeName(f"{tensor.name}_offset", f"{tensor.text}.storage_offset()")
    dim = int(m.group("dim"))
    if m.group("kind") == "stride":
        return SizeName(f"{tensor.name}_stride{dim}", f"{tensor.text}.stride({dim})")
    return SizeName(_dimension_name(tensor, dim, token), f"{tensor.text}.size({dim})")


def _from_shapes(
    sizes: list[fx.Node],
    placeholders: Sequence[fx.Node],
    tensors: dict[str, _Tensor],
    token: _Tensor | None,
    out: dict[str, SizeName],
) -> None:
    """Name the size placeholders left by the example shapes of the tensor
    inputs: the token ids first (:data:`TOKEN_IDS` order), then graph order."""
    left: dict[Any, list[fx.Node]] = {}
    for p in sizes:
        if p.name not in out:
            left.setdefault(_symbol(p), []).append(p)
    inputs = [p for p in placeholders if p.name in tensors]
    rank = {t: TOKEN_IDS.index(t) for t in TOKEN_IDS}
    inputs.sort(key=lambda p: rank.get(tensors[p.name].name, len(rank)))
    for p in inputs:
        tensor = tensors[p.name]
        for dim, size in enumerate(example_value(p).shape):
            expr = getattr(getattr(size, "node", None), "expr", None)
            candidates = left.get(expr, [])
            if tensor.name not in TOKEN_IDS:
                candidates = [c for c in candidates if _RAW_SYMBOL.fullmatch(c.name)]
            if candidates:
                found = candidates[0]
                left[expr].remove(found)
                out[found.name] = SizeName(
                    _dimension_name(tensor, dim, token), f"{tensor.text}.size({dim})"
                )
