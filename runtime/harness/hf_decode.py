"""Greedy decoding of a transformers causal LM with a static KV cache.

NOTE: [one graph for the prefill, one for every decode step]
A static cache keeps its keys and values in tensors of a fixed shape
(``[batch, kv_heads, max_cache_len, head_dim]``) that each forward updates in
place (``index_copy_``) at positions read from a tensor counter, so nothing
about a decode step changes what Dynamo sees but the values of tensors.
Compiled with ``dynamic=True``: the prefill (a prompt of two tokens or more)
is one graph whatever the prompt length, and every decode step (one token: a
static size, Dynamo's 0/1 specialization) is the second.  The cache is
initialized before the first forward (``early_initialization``), so no graph
allocates it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from stitch.core.errors import StitchConfigError


def static_cache(model: torch.nn.Module, batch: int, max_cache_len: int) -> Any:
    """An initialized ``StaticCache`` for ``batch`` sequences of ``max_cache_len`` tokens."""
    from transformers import StaticCache

    config = model.config.get_text_config(decoder=True)
    cache = StaticCache(config=config, max_cache_len=max_cache_len)
    head_dim = (
        getattr(config, "head_dim", None)
        or config.hidden_size // config.num_attention_heads
    )
    kv_heads = (
        getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    )
    param = next(model.parameters())
    cache.early_initialization(batch, kv_heads, head_dim, param.dtype, param.device)
    return cache


def greedy_decode(
    forward: Callable[..., Any],
    model: torch.nn.Module,
    prompt: torch.Tensor,
    new_tokens: int,
) -> torch.Tensor:
    """Prompt plus ``new_tokens`` greedily chosen tokens, ``[batch, prompt + new]``.

    ``forward`` is the model or a compiled model; ``model`` gives the config of
    the cache.  A fresh static cache holds exactly the prompt and the new tokens.
    """
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise StitchConfigError(
            f"greedy_decode: prompt must be [batch, tokens] with tokens >= 1, got "
            f"shape {tuple(prompt.shape)}"
        )
    if new_tokens < 1:
        raise StitchConfigError(f"greedy_decode: new_tokens={new_tokens} must be >= 1")
    batch, length = prompt.shape
    cache = static_cache(model, batch, length + new_tokens)
    tokens = [prompt]
    step_input = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            out = forward(input_ids=step_input, past_key_values=cache, use_cache=True)
            step_input = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(step_input)
    return torch.cat(tokens, dim=1)
