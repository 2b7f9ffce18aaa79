"""Registering the ``"stitch"`` attention with transformers, refused for the models it cannot serve.

``register()`` adds :func:`.attention.stitch_attention_forward` to transformers'
``AttentionInterface`` (with SDPA's mask builder), after installing the one
check that refuses "stitch" for a model whose attention would never call it
(NOTE: [models whose attention "stitch" cannot serve]).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import torch

from stitch.core.errors import StitchConfigError, StitchRuntimeError

from ..pipeline.api import dispatches_through_transformers, is_attention
from .attn_implementation import ATTN_IMPLEMENTATION, stitch_attention_forward


def register() -> None:
    """Register ``"stitch"`` with transformers (idempotent), refused for the models
    it cannot serve (NOTE: [models whose attention "stitch" cannot serve])."""
    from transformers import AttentionInterface, PreTrainedModel
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    # The refusal first: where it cannot be installed, "stitch" is not registered.
    _install_refusal(PreTrainedModel)
    AttentionInterface.register(ATTN_IMPLEMENTATION, stitch_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


# NOTE: [models whose attention "stitch" cannot serve]
# "stitch" reaches a model's attention only through transformers' attention
# functions (``ALL_ATTENTION_FUNCTIONS``).  A model whose attention modules do
# not dispatch through them never calls it, yet reads the implementation's name
# elsewhere: Falcon picks its attention class by it (``KeyError: 'stitch'``
# while it is built), and Bloom's ``create_causal_mask`` returns the mask
# builder of "stitch", SDPA's: None where the causal flag could stand in for
# the mask, else a boolean mask, where Bloom's eager (ALiBi) attention adds an
# additive float mask to its scores.  So Bloom attends to later tokens (or adds
# 0/1 to its scores), and its logits move by about 2e-2, with no error.
#
# transformers checks a requested name only against the registered ones, in
# ``PreTrainedModel.get_correct_attn_implementation``; it has no per-model
# refusal of a registered name (``_can_set_attn_implementation``, its source
# heuristic for the same question, is read by ``set_attn_implementation`` only,
# which warns and keeps the model's attention, not when a model is built).  So
# ``register()`` wraps that method, which every model's ``__init__`` calls
# (``from_config``, ``from_pretrained``, the submodels of a composite model) with
# the requested name before any layer is built, and ``set_attn_implementation``
# calls too: for "stitch" it refuses a model class whose modeling module holds
# attention classes that do not dispatch through transformers' attention
# functions, as the splitting warnings judge them (``dispatches_through_transformers``
# in runtime/pipeline/split_warnings.py); for any other name it calls transformers'
# method with the same arguments, untouched.  It is the one change Stitch makes
# to transformers outside its registries; the wrapper is marked, so it is
# installed once.  Feature-detected: a transformers without the method gets a
# StitchRuntimeError from register(), never an unchecked "stitch".

# The mark on the installed wrapper.
_REFUSAL_MARK = "_stitch_refuses_unserved_models"


def unserved_attention(model_class: type) -> list[type]:
    """The attention classes of ``model_class``'s modeling module that do not
    dispatch through transformers' attention functions, by name."""
    module = sys.modules.get(model_class.__module__)
    found = {
        obj.__name__: obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, torch.nn.Module)
        and is_attention(obj.__name__)
        and not dispatches_through_transformers(obj)
    }
    return [found[name] for name in sorted(found)]


def refuse_unserved(model_class: type) -> None:
    """Raise ``StitchConfigError`` when "stitch" cannot serve ``model_class``."""
    unserved = unserved_attention(model_class)
    if not unserved:
        return
    names = ", ".join(cls.__name__ for cls in unserved)
    others = '"eager"' + (
        ' or "sdpa"' if getattr(model_class, "_supports_sdpa", False) else ""
    )
    raise StitchConfigError(
        f"attn_implementation={ATTN_IMPLEMENTATION!r} cannot serve "
        f"{model_class.__name__}: the attention of its modeling module "
        f"{model_class.__module__} ({names}) does not dispatch through "
        "transformers' attention functions (ALL_ATTENTION_FUNCTIONS), so Stitch's "
        f"op would never run and the mask built for {ATTN_IMPLEMENTATION!r} would "
        "change its numbers. Build it with its default attention (no "
        f"attn_implementation) or attn_implementation={others}: Stitch then splits "
        "it where its attention calls SDPA, and compiles it as one piece otherwise"
    )


def _install_refusal(base: type) -> None:
    original = getattr(base, "get_correct_attn_implementation", None)
    if original is None:
        import transformers

        raise StitchRuntimeError(
            f"transformers {transformers.__version__} has no "
            f"{base.__name__}.get_correct_attn_implementation, where Stitch refuses "
            f"attn_implementation={ATTN_IMPLEMENTATION!r} for the models it cannot "
            "serve; use a transformers Stitch supports (pyproject.toml, the hf extra)"
        )
    if getattr(original, _REFUSAL_MARK, False):
        return

    @functools.wraps(original)
    def get_correct_attn_implementation(self: Any, *args: Any, **kwargs: Any) -> Any:
        requested = args[0] if args else kwargs.get("requested_attention")
        if requested == ATTN_IMPLEMENTATION:
            refuse_unserved(type(self))
        return original(self, *args, **kwargs)

    setattr(get_correct_attn_implementation, _REFUSAL_MARK, True)
    base.get_correct_attn_implementation = get_correct_attn_implementation
