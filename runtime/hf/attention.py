"""The ``"stitch"`` attention implementation of transformers.

``register()`` adds it to transformers' ``AttentionInterface`` (with SDPA's mask
builder in ``AttentionMaskInterface``), so that::

    AutoModelForCausalLM.from_config(cfg, attn_implementation="stitch")

builds a model whose every attention call is one ``stitch::hf_attention`` op,
which Stitch's default config splits at.  The maths is SDPA's: the model gives
the same numbers as with ``attn_implementation="sdpa"``.
"""

from __future__ import annotations

from typing import Any

import torch

from stitch.codegen.errors import StitchRuntimeError

from . import ops  # noqa: F401 - registers stitch::hf_attention

ATTN_IMPLEMENTATION = "stitch"


def stitch_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature, computed by ``stitch::hf_attention``."""
    _check_supported(module, dropout, kwargs)
    batch, heads, q_length, head_dim = query.shape
    if heads % key.shape[1] != 0:
        raise StitchRuntimeError(
            f"stitch attention in {type(module).__name__}: {heads} query heads is not "
            f"a multiple of {key.shape[1]} key/value heads"
        )
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    # As transformers' SDPA path: the causal flag stands in for a mask only when
    # there is no mask and more than one query token.
    causal = bool(q_length > 1 and attention_mask is None and is_causal)
    scale = float(scaling) if scaling is not None else head_dim**-0.5
    out = query.new_empty((batch, q_length, heads, value.shape[-1]))
    torch.ops.stitch.hf_attention(query, key, value, attention_mask, out, scale, causal)
    return out, None


def _check_supported(
    module: torch.nn.Module, dropout: float, kwargs: dict[str, Any]
) -> None:
    name = type(module).__name__
    if dropout:
        raise StitchRuntimeError(
            f"stitch attention in {name}: dropout={dropout} is not supported (the op "
            "is for inference); call model.eval(), or use attn_implementation='sdpa' "
            "to train"
        )
    if kwargs.get("softcap") is not None:
        raise StitchRuntimeError(
            f"stitch attention in {name}: softcap={kwargs['softcap']} is not supported; "
            "use attn_implementation='eager' for a model with attention logit softcapping"
        )
    if kwargs.get("position_bias") is not None:
        raise StitchRuntimeError(
            f"stitch attention in {name}: a position_bias is not supported; use "
            "attn_implementation='sdpa'"
        )
    if kwargs.get("cache") is not None:
        raise StitchRuntimeError(
            f"stitch attention in {name}: a paged cache is not supported; use a "
            "static or dynamic KV cache"
        )
    if kwargs.get("output_attentions"):
        raise StitchRuntimeError(
            f"stitch attention in {name}: output_attentions=True needs the attention "
            "weights, which the op does not return; use attn_implementation='eager'"
        )


def register() -> None:
    """Register ``"stitch"`` with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, stitch_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
