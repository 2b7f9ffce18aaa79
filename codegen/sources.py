"""Dynamo's sources of a graph's inputs, spelled as the model's paths.

Dynamo records where it took each graph input from (``node.meta["grapharg"]``):
``L['self']._modules['layers']._modules['0']._parameters['weight']``,
``L['input_ids'].size()[0]``.  The emitted header writes these as the module
path (``self.layers.0.weight``) or the argument (``input_ids``).
"""

from __future__ import annotations

import re

import torch.fx as fx


def source_name(node: fx.Node) -> str | None:
    """Dynamo's source of placeholder ``node``, spelled out; None where it kept none."""
    source = getattr(node.meta.get("grapharg"), "source", None)
    if source is None:
        return None
    name = getattr(source, "name", None)
    text = name() if callable(name) else name
    return text if isinstance(text, str) else None


def module_path(source: str) -> str | None:
    """``model.layers.0.self_attn.q_proj.weight`` (an attribute of the compiled
    module, its root left out) or ``input_ids`` (an argument) from ``source``."""
    # NOTE: [the compiled module under a wrapper] in pieces.py
    text = re.sub(r"^L\['(self|kwargs)'\]|^L\['args'\]\[0\](?=\.)", "", source)
    text = re.sub(r"^L\['(\w+)'\]", r"\1", text)  # a positional argument
    text = re.sub(r"\._(modules|parameters|buffers)\['([^']+)'\]", r".\2", text)
    text = re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", text)
    return text.lstrip(".") or None


def source_text(source: str) -> str | None:
    """``source`` as the header writes it: ``self.`` and the module path for an
    attribute of the compiled module, the path alone for an argument."""
    path = module_path(source)
    if path is None:
        return None
    owned = re.match(r"L\['self'\]|L\['args'\]\[0\]\.", source) is not None
    return f"self.{path}" if owned else path
