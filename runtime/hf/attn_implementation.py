"""The ``"stitch"`` attention implementation of transformers.

``register()`` (``registration.py``) adds it to transformers' ``AttentionInterface`` (with SDPA's mask
builder in ``AttentionMaskInterface``), so that::

    AutoModelForCausalLM.from_config(cfg, attn_implementation="stitch")

builds a model whose every attention call is one ``stitch::hf_attention`` op,
which Stitch's default config splits at.  The maths is that of the model's own
attention: SDPA's, plus attention sinks (GPT-OSS), logit softcapping (Gemma 2)
and position biases (T5).  A model whose attention does not dispatch through
transformers' attention functions (Bloom, Falcon) is refused when it is built
(NOTE: [models whose attention "stitch" cannot serve] in ``registration.py``).

A module that carries Stitch's serving KV caches (:func:`.serving.attach_kv_caches`)
runs the token layout instead: one decode token per row, attention through
``stitch::attention`` over the module's own caches (NOTE: [the token layout]).

NOTE: [every argument is taken or refused by name]
transformers calls an attention function with the arguments its model needs,
as keywords, and SDPA's function drops the ones it does not know: a model
whose attention needs one (GPT-OSS's sinks) gets wrong numbers and no word.
Here every keyword transformers (5.17 to 5.24) passes is in ``ARGUMENTS``, with what is
done with it; anything else is a ``StitchRuntimeError`` naming it and the
module, whatever its value.  tests/test_hf_attention.py reads transformers'
call sites and fails when one passes a keyword missing from ``ARGUMENTS``.
"""

from __future__ import annotations

from typing import Any

import torch

from stitch.core.errors import StitchRuntimeError

# stitch::hf_attention, and stitch::attention (serving KV caches), with their
# kernels.
from .. import kernels  # noqa: F401 - registers the ops

ATTN_IMPLEMENTATION = "stitch"
# The serving KV caches' buffer names on an attention module (serving.py).
K_CACHE, V_CACHE = "stitch_k_cache", "stitch_v_cache"

# Every keyword transformers passes to an attention function, and what is done
# with it (NOTE: [every argument is taken or refused by name]).
ARGUMENTS: dict[str, str] = {
    # the positional arguments, when a call site names them
    "query": "the queries",
    "key": "the keys",
    "value": "the values",
    "attention_mask": "the mask (boolean or additive), from SDPA's mask builder",
    # computed
    "scaling": "the softmax scale (default head_dim ** -0.5)",
    "is_causal": "causal attention when there is no mask (SDPA's rule)",
    "s_aux": "attention sinks, one logit per head (GPT-OSS)",
    "sinks": "attention sinks, [batch, heads, q_len, 1] logits",
    "softcap": "logit softcapping (Gemma 2)",
    "position_bias": "an additive bias, combined with the mask (T5)",
    "sliding_window": "carried by the mask; refused when a longer key comes unmasked; "
    "with serving KV caches, the op's window",
    "dropout": "must be 0 (inference); refused otherwise",
    "output_attentions": "must be False; the op returns no weights",
    "cache": "must be None; a paged cache is refused",
    "indices": "must be None; sparse attention indices are refused",
    "block_indices": "must be None; block-sparse indices are refused",
    # read by other parts of the model, or by the mask builder, as SDPA does
    "position_ids": "read by the mask builder (packed sequences); with serving "
    "KV caches, each token's position in its sequence (required)",
    "cu_seq_lens_q": "packed sequences: the mask built from position_ids carries them",
    "cu_seq_lens_k": "packed sequences: the mask built from position_ids carries them",
    "max_length_q": "packed sequences: the mask built from position_ids carries them",
    "max_length_k": "packed sequences: the mask built from position_ids carries them",
    "seq_idx": "packed sequences of the state-space layers; not attention's",
    "deterministic": "flash attention's switch; the op is deterministic",
    "num_items_in_batch": "the loss's; not attention's",
    "output_hidden_states": "the model's outputs; not attention's",
    "output_router_logits": "the model's outputs; not attention's",
    # Model inputs that some models' layers pass on to their attention module,
    # which passes its **kwargs on: the module has used them (the KV cache is
    # updated before the call) or they are another part's.
    "use_cache": "the module has updated the cache already",
    "past_key_values": "the module has updated the cache already",
    "return_dict": "the model's outputs; not attention's",
    "position_embeddings": "applied to query and key before the call",
    "inputs_embeds": "a model input; not attention's",
    "input_ids": "a model input; not attention's",
    "encoder_hidden_states": "cross-attention projected its keys and values from it "
    "before the call; a self-attention module gets None",
    "cache_params": "the state-space layers' cache of a hybrid model; not attention's",
    "grid_thw": "a vision model input; not attention's",
    "encoder_outputs": "an encoder-decoder model input; not attention's",
    "decoder_input_ids": "an encoder-decoder model input; not attention's",
    "decoder_inputs_embeds": "an encoder-decoder model input; not attention's",
    "decoder_attention_mask": "an encoder-decoder model input; the mask builder's",
    "decoder_position_ids": "an encoder-decoder model input; the mask builder's",
}

# Keywords that must be absent, None or False: what is refused, and the fix.
_REFUSED_UNLESS_UNSET = {
    "output_attentions": "it needs the attention weights, which the op does not "
    "return; use attn_implementation='eager'",
    "cache": "a paged cache is not supported; use a static or dynamic KV cache",
    "indices": "sparse attention is not supported; use the model's default attention",
    "block_indices": "block-sparse attention is not supported; use the model's "
    "default attention",
}


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
    """transformers' attention-function signature, computed by ``stitch::hf_attention``
    (``stitch::attention`` over the module's serving KV caches when it has them)."""
    _check_arguments(module, dropout, kwargs)
    if getattr(module, K_CACHE, None) is not None:
        return _token_attention(module, query, key, value, scaling, kwargs)
    batch, heads, q_length, head_dim = query.shape
    if heads % key.shape[1] != 0:
        raise StitchRuntimeError(
            f"stitch attention in {_where(module)}: {heads} query heads is not "
            f"a multiple of {key.shape[1]} key/value heads"
        )
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    # As transformers' SDPA path: the causal flag stands in for a mask only when
    # there is no mask and more than one query token.
    causal = bool(q_length > 1 and attention_mask is None and is_causal)
    # NOTE: [sliding windows live in the mask]
    # transformers builds the window into the mask (masking_utils) and leaves
    # the mask out only while every key is inside the window; an unmasked key
    # beyond it would be attended to, silently.
    window = kwargs.get("sliding_window")
    if window is not None and attention_mask is None and key.shape[2] > window:
        raise StitchRuntimeError(
            f"stitch attention in {_where(module)}: sliding_window={window} with "
            f"{key.shape[2]} keys and no attention mask; the window must come in "
            "the mask (register() installs SDPA's mask builder for 'stitch')"
        )
    position_bias = kwargs.get("position_bias")
    if position_bias is not None:
        attention_mask = _bias_mask(position_bias, attention_mask, causal, query, key)
        causal = False
    out = query.new_empty((batch, q_length, heads, value.shape[-1]))
    torch.ops.stitch.hf_attention(
        query,
        key,
        value,
        attention_mask,
        out,
        float(scaling) if scaling is not None else head_dim**-0.5,
        causal,
        _sinks(module, kwargs, heads),
        float(kwargs.get("softcap") or 0.0),
    )
    return out, None


def _token_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float | None,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, None]:
    """Decode attention of the token layout over the module's serving KV caches.

    NOTE: [the token layout]
    A serving engine's layout (vLLM's transformers backend, the example llama):
    the forward's batch is the tokens (``input_ids`` and ``position_ids`` of
    shape ``[tokens, 1]``), token ``i`` the newest of sequence slot ``i``.  Its
    key and value are written into the module's caches (``[max_seqs, max_len,
    kv_heads, head_dim]``) at ``position_ids[i]`` and it attends to its slot's
    first ``position + 1`` entries; a negative position is a padding row (it
    writes nothing and its output is zero: CUDA graph padding's pad value).
    The caches are module buffers, so Dynamo keeps them as module state with
    static shapes, which padding never copies.  transformers' mask is not read:
    it describes the keys of this call, one per row, not the cached ones.
    """
    k_cache, v_cache = getattr(module, K_CACHE), getattr(module, V_CACHE)
    where = f"stitch attention in {_where(module)} (serving KV caches)"
    tokens, heads, _, head_dim = query.shape
    _check_token_shapes(where, query, key, value, k_cache)
    positions = _token_positions(where, kwargs, tokens)
    for name in ("sinks", "position_bias"):
        if kwargs.get(name) is not None:
            raise StitchRuntimeError(
                f"{where}: {name}={_short(kwargs[name])} is not supported in the "
                "token layout; serve the model without the KV caches"
            )
    sinks = _sinks(module, kwargs, heads)
    out = query.new_empty((tokens, heads, head_dim))
    torch.ops.stitch.attention(
        query[:, :, 0],
        key[:, :, 0],
        value[:, :, 0],
        k_cache,
        v_cache,
        positions[:, 0],
        out,
        float(scaling) if scaling is not None else head_dim**-0.5,
        None if sinks is None else sinks.reshape(heads),
        float(kwargs.get("softcap") or 0.0),
        int(kwargs.get("sliding_window") or 0),
    )
    return out.unsqueeze(1), None


def _check_token_shapes(
    where: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
) -> None:
    """One query and key token per row, and heads and head size that fit the caches."""
    _, heads, q_length, head_dim = query.shape
    if q_length != 1 or key.shape[2] != 1:
        raise StitchRuntimeError(
            f"{where}: {q_length} query and {key.shape[2]} key tokens per row; the "
            "token layout takes one: input_ids and position_ids of shape "
            "[tokens, 1], use_cache=False and no past_key_values"
        )
    cache_heads, cache_dim = k_cache.shape[2], k_cache.shape[3]
    if (
        heads % key.shape[1]
        or key.shape[1] != cache_heads
        or value.shape[1] != cache_heads
        or head_dim != cache_dim
        or value.shape[3] != cache_dim
    ):
        raise StitchRuntimeError(
            f"{where}: query {tuple(query.shape[1:])}, key {tuple(key.shape[1:])} "
            f"and value {tuple(value.shape[1:])} ([heads, 1, head_dim]) do not fit "
            f"caches of {cache_heads} key/value heads of {cache_dim} (query heads "
            "must be a multiple of the key/value heads); attach the caches again "
            "after changing the model"
        )


def _token_positions(where: str, kwargs: dict[str, Any], tokens: int) -> torch.Tensor:
    """Each token's position: integer ``position_ids`` of shape ``[tokens, 1]``."""
    positions = kwargs.get("position_ids")
    if positions is None:
        raise StitchRuntimeError(
            f"{where}: position_ids=None; the token layout needs each token's "
            "position (this model does not pass position_ids to its attention, "
            "or the forward was called without them)"
        )
    if (
        positions.dim() != 2
        or positions.shape[1] != 1
        or positions.shape[0] != tokens
        or positions.is_floating_point()
    ):
        raise StitchRuntimeError(
            f"{where}: position_ids={_short(positions)}; expected integer positions "
            f"of shape [tokens, 1] for {tokens} tokens"
        )
    return positions


def _where(module: torch.nn.Module) -> str:
    layer = getattr(module, "layer_idx", None)
    name = type(module).__name__
    return name if layer is None else f"{name} (layer {layer})"


def _check_arguments(
    module: torch.nn.Module, dropout: float, kwargs: dict[str, Any]
) -> None:
    for name in kwargs:
        if name not in ARGUMENTS:
            raise StitchRuntimeError(
                f"stitch attention in {_where(module)}: argument {name}="
                f"{_short(kwargs[name])} is not implemented (transformers passes "
                "an argument this version of Stitch does not know); use the "
                "model's default attention, or a Stitch that implements it"
            )
    if dropout:
        raise StitchRuntimeError(
            f"stitch attention in {_where(module)}: dropout={dropout} is not supported "
            "(the op is for inference); call model.eval(), or use "
            "attn_implementation='sdpa' to train"
        )
    for name, why in _REFUSED_UNLESS_UNSET.items():
        if kwargs.get(name) is not None and kwargs[name] is not False:
            raise StitchRuntimeError(
                f"stitch attention in {_where(module)}: {name}={_short(kwargs[name])} "
                f"is refused: {why}"
            )


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"<tensor {tuple(value.shape)} {value.dtype}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _sinks(
    module: torch.nn.Module, kwargs: dict[str, Any], heads: int
) -> torch.Tensor | None:
    s_aux, sinks = kwargs.get("s_aux"), kwargs.get("sinks")
    if s_aux is not None and sinks is not None:
        raise StitchRuntimeError(
            f"stitch attention in {_where(module)}: both s_aux and sinks are given"
        )
    if s_aux is not None:
        if s_aux.numel() != heads:
            raise StitchRuntimeError(
                f"stitch attention in {_where(module)}: s_aux has shape "
                f"{tuple(s_aux.shape)}, expected one sink per head ({heads})"
            )
        return s_aux.reshape(1, heads, 1, 1)
    if sinks is not None and (sinks.dim() != 4 or sinks.shape[-1] != 1):
        raise StitchRuntimeError(
            f"stitch attention in {_where(module)}: sinks has shape "
            f"{tuple(sinks.shape)}, expected [batch, heads, q_len, 1]"
        )
    return sinks


def _bias_mask(
    bias: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    query: torch.Tensor,
    key: torch.Tensor,
) -> torch.Tensor:
    """The position bias and the mask as one additive mask (as transformers' SDPA path)."""
    lowest = torch.finfo(key.dtype).min
    if mask is None:
        if not causal:
            return bias
        q_len, kv_len = query.shape[2], key.shape[2]
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=key.device).tril()
        return torch.where(allowed, bias, lowest)
    if mask.dtype == torch.bool:
        return torch.where(mask, bias, lowest)
    return bias + mask
