"""Readable names for the emitted function's parameters: the model's paths, not Dynamo's.

NOTE: [names from the model's paths]
Dynamo names a graph input after its source, spelled out:
``L['self'].model.layers[0].self_attn.q_proj.weight`` becomes the placeholder
``l_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_q_proj_parameters_weight_``.
Every weight is passed on to a piece call, so each such name appears at least
twice, and they are most of an emitted file.  The emitted source names the
parameter after the module path instead: the ``l_``/``self``/``kwargs``
wrapping and the ``modules``/``parameters``/``buffers`` steps go, as does a
first step every weight shares (``model``), giving ``layers_0_self_attn_q_proj_weight``;
a name still over :data:`MAX_CHARS` drops inner words (the layer numbers
stay).  A size symbol that is a dimension of the token ids is named for what
it is (``num_tokens``; ``batch_size`` and ``seq_len`` for 2-D ids).  Only the
names change: the function binds its arguments by position, so nothing that
calls it depends on them, and the header's table maps each name back to its
module path and Dynamo's name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch.fx as fx

from .fingerprint import example_value

# 48 at most in the emitted source: room is left for the namespace's ``_N``.
MAX_CHARS = 44
_DYNAMO = re.compile(r"[lL]_(\w+?)_?")
_GLOBAL = re.compile(r"[gG]_(\w+?)_?")
# A source Dynamo wraps in a call it names first: object_getattribute_l_self_...
_WRAPPED = re.compile(r"[a-z]\w*?_((?:l|L)_(?:self|kwargs)_\w+)")
_STEPS = re.compile(r"(?:^|_)(?:modules|parameters|buffers)_")
# The module itself as the first positional argument of a wrapper around its
# forward (NOTE: [the compiled module under a wrapper] in pieces.py): Dynamo
# spells its attributes l_args_0_modules_..., l_args_0_parameters_...
_SELF_UNDER_WRAPPER = re.compile(r"^args_0_(?=(?:modules|parameters|buffers)_)")
_TOKEN_IDS = ("input_ids", "ids", "tokens", "token_ids", "positions", "position_ids")


def _self_rooted(core: str) -> str:
    """``core`` with the wrapped module's root (``args_0_``) spelled ``self_``."""
    return _SELF_UNDER_WRAPPER.sub("self_", core)


def dotted_path(name: str) -> str | None:
    """The module path Dynamo's ``name`` spells, its steps joined by dots
    (``model.layers.0.mlp.up_proj.weight``); an attribute's own underscores stay."""
    wrapped = _WRAPPED.fullmatch(name)
    if wrapped is not None:
        return dotted_path(wrapped.group(1))
    g = _GLOBAL.fullmatch(name)
    if g is not None:
        return re.sub(r"^_*import_", "", g.group(1)).replace("_dot_", ".")
    m = _DYNAMO.fullmatch(name)
    if m is None:
        return None
    core = re.sub(r"^(self|kwargs)_", "", _self_rooted(m.group(1)))
    parts = [p for p in _STEPS.split(core) if p]
    return ".".join(parts)


def source_path(name: str) -> tuple[str, str] | None:
    """``(kind, dotted path)`` Dynamo's placeholder ``name`` spells, else None:
    kind ``self`` (a module attribute), ``kwargs`` or ``arg`` (the forward's
    arguments), ``global`` (a module global)."""
    wrapped = _WRAPPED.fullmatch(name)
    if wrapped is not None:  # object_getattribute_l_self_config_..._ (torch 2.11)
        return source_path(wrapped.group(1))
    g = _GLOBAL.fullmatch(name)
    if g is not None:  # G['__import_transformers_dot_activations'].math.pi
        return "global", (dotted_path(name) or "").replace(".", "_")
    m = _DYNAMO.fullmatch(name)
    if m is None:
        return None
    core = _self_rooted(m.group(1))
    kind = "arg"
    for prefix in ("self_", "kwargs_"):
        if core.startswith(prefix):
            kind, core = prefix[:-1], core[len(prefix) :]
            break
    core = _STEPS.sub("_", core).strip("_")
    return kind, core


def _shorten(name: str) -> str:
    """Drop the word before the last (or before a trailing number) until it fits:
    ``layers_0_post_attention_layernorm_variance_epsilon`` ->
    ``layers_0_post_attention_layernorm_epsilon``; the first two words stay."""
    words = name.split("_")
    while len("_".join(words)) > MAX_CHARS and len(words) > 3:
        at = len(words) - 2
        while at > 1 and words[at].isdigit():
            at -= 1
        if at <= 1:
            break
        del words[at]
    return "_".join(words)


def tidy(name: str) -> str:
    """``name``, readable if it is one of Dynamo's source-spelling names."""
    found = source_path(name)
    return _shorten(found[1]) if found is not None and found[1] else name


def readable_names(placeholders: Sequence[fx.Node]) -> dict[str, str]:
    """A candidate name per placeholder name (the namespace makes them unique)."""
    paths = {p.name: source_path(p.name) for p in placeholders}
    owned = [path for kind, path in filter(None, paths.values()) if kind == "self"]
    # A first step most module attributes share (``model``) says nothing:
    # dropped where the rest is a name of its own, clashing with no other.
    firsts = [path.split("_", 1)[0] for path in owned if "_" in path]
    common = max(set(firsts), key=firsts.count) if firsts else ""
    shared = common + "_" if firsts.count(common) * 2 > len(owned) > 1 else ""
    taken = set(owned)
    out: dict[str, str] = {}
    for p in placeholders:
        found = paths[p.name]
        if found is None:
            continue
        kind, path = found
        if kind == "self" and shared and path.startswith(shared):
            rest = path[len(shared) :]
            if rest and not rest[0].isdigit() and rest not in taken:
                path = rest
        out[p.name] = _shorten(path)
    out.update(_size_names(placeholders, out))
    return out


def _size_names(
    placeholders: Sequence[fx.Node], names: dict[str, str]
) -> dict[str, str]:
    """``num_tokens`` (``batch_size``, ``seq_len``) for size symbols the token ids tell."""
    symbols = {}
    for p in placeholders:
        value = example_value(p)
        expr = getattr(getattr(value, "node", None), "expr", None)
        if expr is not None and getattr(expr, "is_Symbol", False):
            symbols[expr] = p.name
    out: dict[str, str] = {}
    for p in placeholders:
        if names.get(p.name, p.name) not in _TOKEN_IDS:
            continue
        value = example_value(p)
        shape: Any = getattr(value, "shape", None)
        if shape is None:
            continue
        meaning = ["num_tokens"] if len(shape) == 1 else ["batch_size", "seq_len"]
        for dim, size in zip(shape, meaning, strict=False):
            expr = getattr(getattr(dim, "node", None), "expr", None)
            if expr in symbols and symbols[expr] not in out:
                out[symbols[expr]] = size
        break
    return out


def provenance(placeholders: Sequence[fx.Node], emitted: dict[str, str]) -> list[str]:
    """The header's table: each renamed parameter, its module path, Dynamo's name."""
    rows = []
    for p in placeholders:
        name = emitted.get(p.name, p.name)
        if name == p.name:
            continue
        found = source_path(p.name)
        if found is not None:
            kind, _ = found
            where = _module_path(p) or dotted_path(p.name) or found[1]
            where = f"{'self.' if kind == 'self' else ''}{where}"
        else:
            where = "size"
        rows.append(f"  {name}: {where} ({p.name})")
    return rows


def _module_path(node: fx.Node) -> str | None:
    """``model.layers.0.self_attn.q_proj.weight`` from Dynamo's source, where kept."""
    source = getattr(node.meta.get("grapharg"), "source", None)
    if source is None:
        return None
    name = getattr(source, "name", None)
    text = name() if callable(name) else name
    if not isinstance(text, str):
        return None
    # NOTE: [the compiled module under a wrapper] in pieces.py
    text = re.sub(r"^L\['(self|kwargs)'\]|^L\['args'\]\[0\](?=\.)", "", text)
    text = re.sub(r"^L\['(\w+)'\]", r"\1", text)  # a positional argument
    text = re.sub(r"\._(modules|parameters|buffers)\['([^']+)'\]", r".\2", text)
    text = re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", text)
    return text.lstrip(".") or None
