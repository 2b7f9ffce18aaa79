"""A trace of transformers' model beside the engine's own forward of it (NOTE:
[a trace beside the model's own forward]; NOTE: [the engine serves while
Dynamo traces] in saved_step.py)."""

from __future__ import annotations

import copy
from typing import Any

import torch


def structure_copy(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` copied but for its tensors, which the copy shares.

    NOTE: [a trace beside the model's own forward]
    Dynamo reads the Python objects of the model it traces as they are at that
    moment, and a saved forward has no guards to notice later that they
    differed.  transformers' forwards change their model's objects while they
    run: ``merge_with_config_defaults`` (5.24) sets ``config.is_causal`` for
    the call and deletes it after.  Traced while the engine's thread ran the
    same model, the saved forward read the attribute as present and deleted it
    on every call: the engine died with "'LlamaConfig' object has no attribute
    'is_causal'".  So a trace beside the model's own forward (NOTE: [the engine
    serves while Dynamo traces]) is of a copy: its modules, config and every
    other object its own, its parameters, buffers and other tensors the
    model's (no memory, and weights changed in place reach both), and the
    saved forward runs that copy.  The inputs' lists and dicts are copied too,
    since the engine may refill its own between steps; their tensors are
    read only for their metadata.
    """
    shared: dict[int, Any] = {}
    for module in model.modules():
        for value in (*module.parameters(False), *module.buffers(False)):
            shared[id(value)] = value
        for value in vars(module).values():
            if isinstance(value, torch.Tensor):
                shared[id(value)] = value
    return copy.deepcopy(model, shared)


def containers_copy(inputs: dict[str, Any]) -> dict[str, Any]:
    return {
        name: (
            dict(value)
            if isinstance(value, dict)
            else list(value) if isinstance(value, list) else value
        )
        for name, value in inputs.items()
    }
