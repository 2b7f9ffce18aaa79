"""A transformers causal LM served in Stitch's token layout.

:func:`attach_kv_caches` gives every attention module of a model built with
``attn_implementation="stitch"`` its own KV cache buffers; from then on the
``"stitch"`` attention runs ``stitch::attention`` over them, one decode token
per row (NOTE: [the token layout] in attn_implementation.py), and the model can run
under Stitch's CUDA graphs: the caches are module state that padding never
copies, and every input and output has the token count as dim 0.  A forward::

    model(input_ids=ids, position_ids=positions)  # both [tokens, 1]; .logits [tokens, 1, vocab]

with ``cudagraph_pad_values=PAD_VALUES`` (a padding row's position is -1: it
writes no cache entry).  :func:`build_serving_llama` and :func:`serving_inputs`
build the benchmark's model and inputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from stitch.core.errors import StitchConfigError, StitchRuntimeError

from .attn_implementation import ATTN_IMPLEMENTATION, K_CACHE, V_CACHE
from .registration import register

# The pad value of each padded input (CompilationConfig.cudagraph_pad_values):
# a padding row at position -1 writes nothing and reads nothing.  input_ids
# pads with 0, the default, any valid token id.
PAD_VALUES = {"position_ids": -1}

_HOOK = "_stitch_serving_hook"


def attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The attention modules of ``model``: its ``*Attention`` modules with a
    ``layer_idx`` and a ``head_dim`` (what transformers' decoders build)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if type(module).__name__.endswith("Attention")
        and isinstance(getattr(module, "head_dim", None), int)
        and hasattr(module, "layer_idx")
    ]


def attach_kv_caches(model: torch.nn.Module, max_seqs: int, max_len: int) -> None:
    """Give each attention module caches of ``[max_seqs, max_len, kv_heads, head_dim]``.

    In the model's dtype, on its device, zeroed; registered as non-persistent
    buffers (``state_dict`` is unchanged).  Attaching again replaces them.
    The model's ``use_cache`` default becomes False (transformers' own cache
    would be filled for nothing), and a forward that asks for it or leaves out
    ``position_ids`` is refused.
    """
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation != ATTN_IMPLEMENTATION:
        raise StitchConfigError(
            f"attach_kv_caches: {type(model).__name__} runs attn_implementation="
            f"{implementation!r}; build it with attn_implementation="
            f"{ATTN_IMPLEMENTATION!r}"
        )
    if max_seqs < 1 or max_len < 1:
        raise StitchConfigError(
            f"attach_kv_caches: max_seqs={max_seqs} and max_len={max_len} must be >= 1"
        )
    modules = attention_modules(model)
    if not modules:
        raise StitchConfigError(
            f"attach_kv_caches: {type(model).__name__} has no attention module "
            "(an *Attention module with layer_idx and head_dim)"
        )
    text = config.get_text_config(decoder=True)
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    param = next(model.parameters())
    for _, module in modules:
        shape = (max_seqs, max_len, kv_heads, module.head_dim)
        for name in (K_CACHE, V_CACHE):
            cache = torch.zeros(shape, dtype=param.dtype, device=param.device)
            module.register_buffer(name, cache, persistent=False)
    config.use_cache = False
    if getattr(model, _HOOK, None) is None:
        handle = model.register_forward_pre_hook(_check_forward, with_kwargs=True)
        setattr(model, _HOOK, handle)


def reset_kv_caches(model: torch.nn.Module) -> None:
    """Zero every serving KV cache of ``model``."""
    for _, module in attention_modules(model):
        for name in (K_CACHE, V_CACHE):
            cache = getattr(module, name, None)
            if cache is not None:
                cache.zero_()


def kv_caches(model: torch.nn.Module) -> list[torch.Tensor]:
    """The serving KV caches, in module order (key then value per module)."""
    caches = [
        getattr(module, name)
        for _, module in attention_modules(model)
        for name in (K_CACHE, V_CACHE)
    ]
    if not all(isinstance(c, torch.Tensor) for c in caches):
        raise StitchConfigError(
            f"{type(model).__name__} has no serving KV caches; call attach_kv_caches"
        )
    return caches


def _check_forward(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Refuse the forwards the token layout cannot serve (a forward pre-hook).

    NOTE: [positions are required]
    transformers fills a missing ``position_ids`` with ``0 .. seq - 1``: in the
    token layout (``seq`` 1) every token would sit at position 0 and overwrite
    its slot's first cache entry, without a word.
    """
    name = type(model).__name__
    positions = kwargs.get("position_ids", args[2] if len(args) > 2 else None)
    if positions is None:
        raise StitchRuntimeError(
            f"{name} with serving KV caches: position_ids=None; pass each token's "
            "position, position_ids of shape [tokens, 1] (-1: a padding row)"
        )
    # transformers 5.24 names the model's cache argument ``cache`` (it was
    # ``past_key_values``, still taken with a deprecation warning).
    for key in ("past_key_values", "cache", "use_cache"):
        if kwargs.get(key) is not None and kwargs[key] is not False:
            raise StitchRuntimeError(
                f"{name} with serving KV caches: {key}={kwargs[key]!r}; the "
                "attention keeps its own caches: leave it out or pass None/False"
            )


def build_serving_llama(
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    max_seqs: int,
    max_len: int,
    dtype: torch.dtype = torch.float32,
    device: Any = "cpu",
    seed: int = 0,
) -> torch.nn.Module:
    """A ``LlamaForCausalLM`` with ``attn_implementation="stitch"``, random weights
    and serving KV caches attached, in eval mode.

    The weights are drawn on ``device`` from ``seed`` (:func:`random_weights`,
    the example llama's scale), then cast to ``dtype``.
    """
    import transformers

    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise StitchConfigError(
            f"build_serving_llama: hidden_size={hidden_size} must be a multiple of "
            f"num_heads={num_heads}, and num_heads of num_kv_heads={num_kv_heads}"
        )
    register()
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_len,
        use_cache=False,
    )
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(
            config, attn_implementation=ATTN_IMPLEMENTATION
        )
    random_weights(model, seed)
    model = model.to(dtype).eval()
    attach_kv_caches(model, max_seqs, max_len)
    return model


def random_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Draw every parameter of ``model`` from ``seed``, on its device: normal,
    standard deviation ``1/sqrt(last dim)``; norm weights around 1 (0.1).

    transformers' own init (``N(0, 0.02)``) leaves a tiny model's attention
    scores near zero, so that attending to the wrong cache entries, or dropping
    a softcap, hardly changes its logits.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.normal_(1.0, 0.1, generator=gen)
            else:
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[-1]), generator=gen)


def serving_inputs(
    model: torch.nn.Module, n: int, seed: int = 0, device: Any = None
) -> dict[str, Any]:
    """The forward's keyword arguments for ``n`` decode tokens, token ``i`` the
    newest of sequence slot ``i`` at a random position below the cache length.

    ``input_ids`` and ``position_ids`` are ``[n, 1]`` int64 (on ``device``,
    default the model's); mark dim 0 of both dynamic before compiling.
    """
    caches = kv_caches(model)
    max_seqs, max_len = caches[0].shape[:2]
    if not 1 <= n <= max_seqs:
        raise StitchConfigError(
            f"serving_inputs: n={n} tokens must be in [1, {max_seqs}] (the caches' "
            "max_seqs)"
        )
    device = caches[0].device if device is None else device
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (n, 1), generator=gen)
    positions = torch.randint(0, max_len, (n, 1), generator=gen)
    return {
        "input_ids": ids.to(device),
        "position_ids": positions.to(device),
        "use_cache": False,
    }
