"""transformers' continuous batching through Stitch: its paged attention routed to
``stitch::paged_attention``, and the user's backend the one that compiles.

::

    backend = StitchBackend(CompilationConfig(splitting_ops=[PAGED_ATTENTION_OP]))
    cb_config = continuous_batching_config(model, backend, num_blocks=64)
    outputs = model.generate_batch(prompts, generation_config, continuous_batching_config=cb_config)
    backend.compiled  # the model call's graph, split at the paged attention (cold)
    model.forward.steps  # its saved forward per cache layout: .warm, .path

NOTE: [how the engine reaches the paged op]
transformers 5.23's ``ContinuousBatchingManager.switch_to_cb_friendly_attn``
(and 5.24's) accepts only ``"paged|eager"``, ``"sdpa"`` or a flash name (a
registered name containing "flash" is looked up as a hub kernel when the model
is built), so a new implementation name cannot reach the engine.  The paged
calls come under the names the engine already calls: ``"sdpa"`` for a model
built with SDPA (5.17 switches it to ``"paged|sdpa"`` while the engine runs,
so there that is the name wrapped: NOTE: [transformers' engine across
versions] in engine_compat.py), and ``"paged|eager"`` for a model built with
``"eager"`` (every version switches it to that name; Gemma 2 and GPT-OSS,
whose softcap and sinks SDPA lacks, can only be built so).  :func:`install`
wraps transformers' function under each of the two names once (the wrapper
is marked), and the wrapper sends a call to :func:`paged_attention_forward`
only when both hold: the engine's ``PagedAttentionCache`` comes under
Stitch's keyword (``engine_compat.PAGED_CACHE``, which only Stitch's saved
forward passes) and the calling attention module belongs to a model that
:func:`route_paged_attention` opted in (a flag on its attention modules).
Stitch's keyword and not the engine's ``cache=``: in 5.24 the attention
module takes ``cache`` itself and writes it with an update that is
``torch.compiler.disable``d, which would break the traced step; under a
keyword transformers does not read, the cache passes every module untouched
and only the op writes it, in every version.  Every other call, a plain
forward of the same model included, and every other model in the process,
goes to transformers' function with the same arguments (through 5.23,
``"paged|eager"``'s stays ``torch.compiler.disable``d, so a model not opted
in compiles as before).  The flag is a module attribute, so Dynamo reads it
as a constant under a guard.  transformers' ``"paged|eager"`` drops Gemma 2's
softcap (it passes the ``softcap`` keyword but the function does not read
it: 5.17 to 5.24); the op applies it, so a Gemma 2 through Stitch gives the
model's own eager attention's tokens, not that function's.

NOTE: [transformers' engine under Stitch]
:func:`continuous_batching_config` gives the engine no compile config: the
engine's step runs eagerly and calls the model once per step, and that call
runs Stitch's saved forward (NOTE: [the engine calls a saved forward] in
saved_step.py), compiled by the user's backend the first time and loaded
without Dynamo by every later process.  (A ``CompileConfig`` would make every
process trace the step, and ``CompileConfig.to_dict`` deep-copies its
backend: the user's would not be the one that compiles.)  The decode fast
path needs flash's block tables (``max_blocks_per_request`` is set to 0), so
every step is the varlen one.  Without a compile config the engine does not
pad its batches; the sizes are dynamic dims of one graph.

NOTE: [the engine's CUDA graphs around Stitch's forward]
On CUDA, ``use_cuda_graph=True`` composes the two: the engine pads each step
to its intervals (query tokens, keys read), fills its static buffers (padding
rows write to and read from its trash rows), and captures the whole step, its
sampling included, once per padded size; the saved forward runs inside the
capture as Inductor's pieces and the paged op, whose launches read only
shapes (no host syncs: NOTE: [cache rows checked on CPU only] in
kernels/paged_attention.py).  Stitch's own graphs do not apply to this
forward: they pad one token count on dim 0, and the engine's batch has
several dynamic sizes (tokens, sequences, keys) on other dims, so the backend
logs "running without CUDA graphs" once and runs its pieces plainly, which is
what a capture around them needs.  The engine runs every step once before
capturing it (its warm-up), so Stitch compiles or loads outside any capture.
For a model on CUDA the engine's graphs are on unless ``use_cuda_graph=False``
(transformers leaves them off for SDPA): on an H200 (2026-11-27,
docs/gpu/h200_window_4.md; a 1B-shape Llama in bf16, warm) they took decode
at 64 requests from 5,725 to 8,484 tokens/s, mixed prefill and decode from
683 to 1,019 tokens/s and the median time to first token from 50 to 34 ms,
with as many tokens equal to the eager engine's, the same start (8.4 s
against 8.5 s) and a 2,048-token prompt as fast (13.3 ms against 13.8 ms);
in fp32 their tokens equalled
eager's (docs/gpu/h200_window_2.md).  They stay off where a tiered start is
asked for (``tiered_start=True``; the engine would keep the uncompiled pieces
it captured), and on the CPU, where transformers turns them off with a
warning.
"""

from __future__ import annotations

from typing import Any

import torch

from stitch.codegen.matching import entry_label
from stitch.core.errors import StitchConfigError, StitchRuntimeError

from ..kernels.paged_attention import PAGED_ATTENTION_OP
from ..pipeline.api import is_attention
from .admission import scheduler_type
from .attn_implementation import ARGUMENTS, _short, _sinks, _where
from .engine_compat import (
    ENGINE_KEYWORDS,
    PAGED_CACHE,
    accepted_implementations,
    check_tested,
    config_fields,
    engine_attention_names,
    layer_cache,
    refuse_flash_switch,
)
from .saved_step import install_engine_forward

# The flag on an opted-in model's attention modules, and the mark on the wrapper.
ROUTED = "_stitch_paged_attention"
_WRAPPED = "_stitch_paged_wrapper"


def paged_attention_forward(
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
    """The engine's paged attention as one ``stitch::paged_attention`` call.

    transformers' mask (``attention_mask``) is not read: the op builds the same
    one from the boundaries (NOTE: [the paged batch of transformers' engine] in
    stitch.runtime.kernels.paged_attention).
    """
    where = f"stitch paged attention in {_where(module)}"
    for name in kwargs:
        # NOTE: [the engine's keywords] in engine_compat.py
        if (
            name not in ARGUMENTS
            and name not in ENGINE_KEYWORDS
            and name != PAGED_CACHE
        ):
            raise StitchRuntimeError(
                f"{where}: argument {name}={_short(kwargs[name])} is not implemented "
                "(transformers' engine passes an argument this Stitch does not know)"
            )
    for name, value_ in (
        ("dropout", dropout),
        ("block_table", kwargs.get("block_table")),
        ("position_bias", kwargs.get("position_bias")),
        ("output_attentions", kwargs.get("output_attentions")),
    ):
        if isinstance(value_, torch.Tensor) or value_ not in (None, False, 0):
            raise StitchRuntimeError(
                f"{where}: {name}={_short(value_)} is not supported by the paged op "
                "(block tables are flash's decode fast path: continuous_batching_config "
                "sets max_blocks_per_request=0)"
            )
    layer = layer_cache(kwargs[PAGED_CACHE], module.layer_idx)
    k_cache, v_cache = layer.k, layer.v
    batch, heads, tokens, head_dim = query.shape
    if (
        batch != 1
        or heads % key.shape[1]
        or k_cache.shape[1:] != key.shape[1:2] + (head_dim,)
    ):
        raise StitchRuntimeError(
            f"{where}: query {tuple(query.shape)} and key {tuple(key.shape)} do not fit "
            f"the paged cache rows {tuple(k_cache.shape[1:])} (one packed batch of "
            "[1, heads, tokens, head_dim]; query heads a multiple of key/value heads)"
        )
    sinks = _sinks(module, kwargs, heads)
    # One per layer type; 5.17 passes the one tensor of a model with one type.
    cu_seq_lens_k = kwargs["cu_seq_lens_k"]
    if isinstance(cu_seq_lens_k, dict):
        cu_seq_lens_k = cu_seq_lens_k[layer.layer_type]
    out = query.new_empty((tokens, heads, value.shape[-1]))
    torch.ops.stitch.paged_attention(
        query[0].transpose(0, 1),
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        k_cache,
        v_cache,
        kwargs["write_index"][layer.group],
        kwargs["read_index"][layer.group],
        kwargs["cu_seq_lens_q"],
        cu_seq_lens_k,
        out,
        float(scaling) if scaling is not None else head_dim**-0.5,
        not layer.window,
        layer.sentinel,
        layer.window,
        float(kwargs.get("softcap") or 0.0),
        None if sinks is None else sinks.reshape(heads),
    )
    return out.unsqueeze(0), None


def install() -> None:
    """Wrap transformers' attention under the engine's names once (NOTE: [how
    the engine reaches the paged op])."""
    from transformers import AttentionInterface

    for name in engine_attention_names():
        original = AttentionInterface._global_mapping[name]
        if not getattr(original, _WRAPPED, False):
            AttentionInterface.register(name, _stitch_or(original))


def _stitch_or(original: Any) -> Any:
    """``original`` with the opted-in models' paged calls sent to Stitch's op."""
    from transformers.generation.continuous_batching.cache import PagedAttentionCache

    def stitch_paged_or_transformers(
        module, query, key, value, attention_mask, *args, **kw
    ):
        if getattr(module, ROUTED, False) and isinstance(
            kw.get(PAGED_CACHE), PagedAttentionCache
        ):
            return paged_attention_forward(
                module, query, key, value, attention_mask, *args, **kw
            )
        return original(module, query, key, value, attention_mask, *args, **kw)

    setattr(stitch_paged_or_transformers, _WRAPPED, True)
    stitch_paged_or_transformers.__wrapped__ = original
    return stitch_paged_or_transformers


def route_paged_attention(model: torch.nn.Module) -> int:
    """Send ``model``'s paged attention calls to Stitch's op; returns how many
    attention modules were opted in (a model with none is refused)."""
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation not in accepted_implementations():
        raise StitchConfigError(
            f"{type(model).__name__}: attn_implementation={implementation!r}; Stitch's "
            "paged attention routes the engine's 'sdpa' and 'paged|eager' calls: build "
            "the model with attn_implementation='sdpa' (or 'eager' where transformers "
            "has no SDPA for it)"
        )
    refuse_flash_switch(model)
    install()
    modules = [
        m
        for m in model.modules()
        if is_attention(type(m).__name__)
        and isinstance(getattr(m, "layer_idx", None), int)
    ]
    if not modules:
        raise StitchConfigError(
            f"{type(model).__name__}: no attention module with a layer_idx, so none "
            "can take the engine's paged cache through Stitch's op"
        )
    if not getattr(type(model), "_supports_attention_backend", False):
        # Bloom, Falcon, GPT-J, ...: the engine updates their paged cache and
        # they attend in their own code, which no attention name reaches.
        raise StitchConfigError(
            f"{type(model).__name__}: _supports_attention_backend=False, its "
            f"attention ({type(modules[0]).__name__}) is computed in its own code, "
            "not through transformers' attention functions, so the engine's paged "
            "calls cannot reach Stitch's op; serve it with transformers' own engine"
        )
    for m in modules:
        setattr(m, ROUTED, True)
    return len(modules)


def continuous_batching_config(
    model: torch.nn.Module, backend: Any, **fields: Any
) -> Any:
    """A ``ContinuousBatchingConfig`` whose model call is compiled by ``backend``
    and saved (NOTE: [transformers' engine under Stitch]), ``model``'s paged
    attention routed to Stitch's op.

    ``fields`` go to ``ContinuousBatchingConfig`` (``num_blocks``,
    ``max_batch_tokens``, ...); the compile configs, the decode fast path and
    the switch to flash are set here (NOTE: [transformers' engine under
    Stitch]); ``use_cuda_graph=True`` lets the engine capture its steps around
    the saved forward on CUDA (NOTE: [the engine's CUDA graphs around Stitch's
    forward]; by default on for a model on CUDA), and ``scheduler_type`` becomes its
    variant that refuses requests the cache can never hold (NOTE: [requests the
    paged cache can never hold] in admission.py).
    """
    from transformers import ContinuousBatchingConfig

    # NOTE: [the tested transformers range] in engine_compat.py
    check_tested()
    config = getattr(backend, "config", None)
    splitting = getattr(config, "splitting_ops", None)
    if splitting is not None and PAGED_ATTENTION_OP not in {
        entry_label(op) for op in splitting
    }:
        raise StitchConfigError(
            f"splitting_ops={[entry_label(op) for op in splitting]} lacks "
            f"{PAGED_ATTENTION_OP!r}: the model's call would compile as one piece "
            "around the cache write; add it to the backend's splitting_ops"
        )
    for name in (
        "varlen_compile_config",
        "decode_compile_config",
        "max_blocks_per_request",
        "auto_switch_to_flash",
    ):
        if name in fields:
            raise StitchConfigError(
                f"continuous_batching_config: {name}={_short(fields[name])} is set by "
                "Stitch; leave it out"
            )
    graphs = _graphs(fields.pop("use_cuda_graph", default_graphs(model, config)))
    if graphs and getattr(config, "tiered_start", None) is True:
        # NOTE: [uncompiled pieces under CUDA graphs] (cudagraph/wrapper.py)
        raise StitchConfigError(
            "continuous_batching_config: use_cuda_graph=True with a tiered start "
            "(tiered_start=True): the engine captures each step once, with the "
            "pieces uncompiled, and its graphs would never run the pieces swapped "
            "in later; set one of them to False"
        )
    route_paged_attention(model)
    install_engine_forward(model, backend)
    fields["scheduler_type"] = scheduler_type(fields.pop("scheduler_type", "fifo"))
    return ContinuousBatchingConfig(
        **config_fields(
            dict(
                # NOTE: [the engine's CUDA graphs around Stitch's forward]
                use_cuda_graph=graphs,
                max_blocks_per_request=0,
                auto_switch_to_flash=False,
                **fields,
            )
        )
    )


def default_graphs(model: Any, config: Any) -> bool:
    """Whether the engine's CUDA graphs go around Stitch's forward when
    ``use_cuda_graph`` is not given: for a model on CUDA, unless a tiered start
    is asked for (NOTE: [the engine's CUDA graphs around Stitch's forward])."""
    device = getattr(model, "device", None)
    tiered = getattr(config, "tiered_start", None) is True
    return getattr(device, "type", None) == "cuda" and not tiered


def _graphs(value: Any) -> bool:
    """``use_cuda_graph`` as one flag: every step is the varlen one (the decode
    fast path is off), so ``(varlen, decode)`` comes down to ``varlen``."""
    pair = isinstance(value, tuple) and len(value) == 2
    if pair and all(isinstance(v, bool) for v in value):
        value = value[0]
    if not isinstance(value, bool):
        raise StitchConfigError(
            f"continuous_batching_config: use_cuda_graph={_short(value)} is not a "
            "bool or a (varlen, decode) pair of bools"
        )
    return value
