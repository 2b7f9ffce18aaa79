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
stay).  A size is named for the input dimension it is (``num_tokens``,
``positions_len``; NOTE: [every size gets a name] in size_names.py).  Only the
names change: the function binds its arguments by position, so nothing that
calls it depends on them, and the header's table maps each name back to its
module path and Dynamo's name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch.fx as fx

from .size_names import size_names
from .sources import module_path, source_name

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
    out = _path_names(placeholders)
    sizes = size_names(placeholders, out, _texts(placeholders))
    out.update({name: size.name for name, size in sizes.items()})
    return out


def _path_names(placeholders: Sequence[fx.Node]) -> dict[str, str]:
    """The names of the placeholders Dynamo named after a source."""
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
    return out


def provenance(placeholders: Sequence[fx.Node], emitted: dict[str, str]) -> list[str]:
    """The header's table: each renamed parameter, its module path and Dynamo's
    name, or the input dimension a size is (NOTE: [every size gets a name])."""
    sizes = size_names(placeholders, _path_names(placeholders), _texts(placeholders))
    rows = []
    for p in placeholders:
        name = emitted.get(p.name, p.name)
        if name == p.name:
            continue
        if p.name in sizes:
            origin = sizes[p.name].origin
            rows.append(f"  {name}: size {origin}" if origin else f"  {name}: size")
            continue
        # else renamed by the namespace alone (a keyword, a clash)
        where = _where(p) or "a graph input"
        rows.append(f"  {name}: {where} ({p.name})")
    return rows


def _where(p: fx.Node) -> str | None:
    """Where a placeholder Dynamo named after a source comes from, as the
    header writes it: ``self.layers.0.mlp.up_proj.weight``, ``input_ids``."""
    found = source_path(p.name)
    if found is None:
        return None
    kind, _ = found
    source = source_name(p)
    path = module_path(source) if source else None
    where = path or dotted_path(p.name) or found[1]
    return f"{'self.' if kind == 'self' else ''}{where}"


def _texts(placeholders: Sequence[fx.Node]) -> dict[str, str]:
    return {p.name: w for p in placeholders if (w := _where(p)) is not None}
