"""transformers' continuous batching through Stitch: its paged attention routed to
``stitch::paged_attention``, and the user's backend the one that compiles.

::

    backend = StitchBackend(CompilationConfig(splitting_ops=[PAGED_ATTENTION_OP]))
    cb_config = continuous_batching_config(model, backend, num_blocks=64)
    outputs = model.generate_batch(prompts, generation_config, continuous_batching_config=cb_config)
    backend.compiled  # the step's graphs, split at the paged attention

NOTE: [how the engine reaches the paged op]
transformers 5.23's ``ContinuousBatchingManager.switch_to_cb_friendly_attn``
accepts only ``"paged|eager"``, ``"sdpa"`` or a flash name (a registered name
containing "flash" is looked up as a hub kernel when the model is built), so a
new implementation name cannot reach the engine.  The paged calls come under
``"sdpa"``: :func:`install` wraps transformers' SDPA function in
``AttentionInterface`` once (the wrapper is marked) and the wrapper sends a call
to :func:`paged_attention_forward` only when both hold: a ``PagedAttentionCache``
is passed (``cache=``, the engine's calls only) and the calling attention module
belongs to a model that :func:`route_paged_attention` opted in (a flag on its
attention modules).  Every other call, a plain forward of the same model
included, and every other model in the process, goes to transformers' function
with the same arguments.  The flag is a module attribute, so Dynamo reads it as
a constant under a guard.  Why not "paged|eager": its function is the
``torch.compiler.disable``d one, and it is the name the engine switches eager
models to, so wrapping it would change them too.

NOTE: [the engine copies its backend]
``CompileConfig.to_dict`` deep-copies its fields, backend included, before
``torch.compile``, and ``resolve_continuous_batching_config`` deep-copies the
whole config: a ``StitchBackend`` given there compiles as a copy, and its
``compiled`` list stays empty.  :class:`EngineBackend` is what goes into the
``CompileConfig``: copying it gives itself, so the user's backend compiles.
``torch.compile`` passes ``mode`` (``CompileConfig`` defaults it to
"reduce-overhead", Inductor's CUDA graphs) as a keyword; Stitch's own
``cudagraph_mode`` decides graphs, so the mode is dropped; ``options`` are
refused by name.

NOTE: [transformers' engine compile paths under Stitch]
For SDPA the engine has one compiled path, the varlen one
(``varlen_compile_config``): the decode fast path needs flash's block tables
(``max_blocks_per_request`` is set to 0 here).  Under compile the engine pads
the query tokens and the keys read to intervals, so steps come in a few sizes;
``dynamic=True`` gives one graph for all.  The engine's CUDA graphs are off
(``use_cuda_graph=False``): on CUDA the graphs are Stitch's.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from stitch.codegen.matching import entry_label
from stitch.core.errors import StitchConfigError, StitchRuntimeError

from ..pipeline.splitting import is_attention
from .admission import scheduler_type
from .attention import ARGUMENTS, _short, _sinks, _where
from .paged import PAGED_ATTENTION_OP

# The flag on an opted-in model's attention modules, and the mark on the wrapper.
ROUTED = "_stitch_paged_attention"
_WRAPPED = "_stitch_paged_wrapper"

# The engine's keywords beyond those of transformers' plain forwards
# (attention.ARGUMENTS), and what is done with them.
PAGED_ARGUMENTS: dict[str, str] = {
    "cache": "the PagedAttentionCache: the layer's cache rows and allocator",
    "read_index": "per allocator: the cache rows of every sequence's keys",
    "write_index": "per allocator: the cache row of every new token",
    "cu_seq_lens_q": "the sequences' query boundaries",
    "cu_seq_lens_k": "per layer type: the sequences' key boundaries",
    "max_length_q": "flash's; the op reads the boundaries",
    "max_length_k": "flash's; the op reads the boundaries",
    "block_table": "flash's decode fast path; must be None",
    "logits_indices": "the engine's sampling; not attention's",
    "logits_processor_args": "the engine's sampling; not attention's",
    "logits_to_keep": "the model's head; not attention's",
}


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
    paged.py).
    """
    where = f"stitch paged attention in {_where(module)}"
    for name in kwargs:
        if name not in ARGUMENTS and name not in PAGED_ARGUMENTS:
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
    cache = kwargs["cache"]
    allocator = cache.layer_to_allocator[module.layer_idx]
    k_cache, v_cache = allocator._kv_token_views[module.layer_idx]
    batch, heads, tokens, head_dim = query.shape
    kv_heads = key.shape[1]
    if (
        batch != 1
        or heads % kv_heads
        or k_cache.shape[1:] != key.shape[1:2] + (head_dim,)
    ):
        raise StitchRuntimeError(
            f"{where}: query {tuple(query.shape)} and key {tuple(key.shape)} do not fit "
            f"the paged cache rows {tuple(k_cache.shape[1:])} (one packed batch of "
            "[1, heads, tokens, head_dim]; query heads a multiple of key/value heads)"
        )
    sliding = allocator.layer_type == "sliding_attention"
    sinks = _sinks(module, kwargs, heads)
    out = query.new_empty((tokens, heads, value.shape[-1]))
    torch.ops.stitch.paged_attention(
        query[0].transpose(0, 1),
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        k_cache,
        v_cache,
        kwargs["write_index"][allocator.index],
        kwargs["read_index"][allocator.index],
        kwargs["cu_seq_lens_q"],
        kwargs["cu_seq_lens_k"][allocator.layer_type],
        out,
        float(scaling) if scaling is not None else head_dim**-0.5,
        not sliding,
        allocator.sentinel_index,
        allocator.sliding_window if sliding else 0,
        float(kwargs.get("softcap") or 0.0),
        None if sinks is None else sinks.reshape(heads),
    )
    return out.unsqueeze(0), None


def install() -> None:
    """Wrap transformers' ``"sdpa"`` once (NOTE: [how the engine reaches the paged op])."""
    from transformers import AttentionInterface
    from transformers.generation.continuous_batching.cache import PagedAttentionCache

    mapping = AttentionInterface._global_mapping
    original = mapping["sdpa"]
    if getattr(original, _WRAPPED, False):
        return

    def sdpa_or_stitch_paged(module, query, key, value, attention_mask, *args, **kw):
        if getattr(module, ROUTED, False) and isinstance(
            kw.get("cache"), PagedAttentionCache
        ):
            return paged_attention_forward(
                module, query, key, value, attention_mask, *args, **kw
            )
        return original(module, query, key, value, attention_mask, *args, **kw)

    setattr(sdpa_or_stitch_paged, _WRAPPED, True)
    sdpa_or_stitch_paged.__wrapped__ = original
    AttentionInterface.register("sdpa", sdpa_or_stitch_paged)


def route_paged_attention(model: torch.nn.Module) -> int:
    """Send ``model``'s paged attention calls to Stitch's op; returns how many
    attention modules were opted in (a model with none is refused)."""
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation != "sdpa":
        raise StitchConfigError(
            f"{type(model).__name__}: attn_implementation={implementation!r}; Stitch's "
            "paged attention routes the engine's 'sdpa' calls: build the model with "
            "attn_implementation='sdpa'"
        )
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
    for m in modules:
        setattr(m, ROUTED, True)
    return len(modules)


class EngineBackend:
    """What the engine's ``CompileConfig`` holds: the user's backend, uncopied
    (NOTE: [the engine copies its backend])."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def __deepcopy__(self, memo: dict[int, Any]) -> EngineBackend:
        return self

    def __copy__(self) -> EngineBackend:
        return self

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Any, **kwargs: Any):
        kwargs.pop("mode", None)
        if kwargs:
            raise StitchConfigError(
                f"CompileConfig passes {sorted(kwargs)} to the backend; Stitch takes "
                "its settings from its CompilationConfig: leave options unset"
            )
        return self.backend(gm, example_inputs)


def continuous_batching_config(
    model: torch.nn.Module, backend: Any, **fields: Any
) -> Any:
    """A ``ContinuousBatchingConfig`` whose step compiles with ``backend``
    (fullgraph, dynamic), ``model``'s paged attention routed to Stitch's op.

    ``fields`` go to ``ContinuousBatchingConfig`` (``num_blocks``,
    ``max_batch_tokens``, ...); the compile configs, the decode fast path, the
    engine's CUDA graphs and the switch to flash are set here (NOTE: [transformers'
    engine compile paths under Stitch]), and ``scheduler_type`` becomes its
    variant that refuses requests the cache can never hold (NOTE: [requests the
    paged cache can never hold] in admission.py).
    """
    from transformers import CompileConfig, ContinuousBatchingConfig

    config = getattr(backend, "config", None)
    splitting = getattr(config, "splitting_ops", None)
    if splitting is not None and PAGED_ATTENTION_OP not in {
        entry_label(op) for op in splitting
    }:
        raise StitchConfigError(
            f"splitting_ops={[entry_label(op) for op in splitting]} lacks "
            f"{PAGED_ATTENTION_OP!r}: the engine's step would compile as one piece "
            "around the cache write; add it to the backend's splitting_ops"
        )
    for name in (
        "varlen_compile_config",
        "decode_compile_config",
        "use_cuda_graph",
        "max_blocks_per_request",
        "auto_switch_to_flash",
    ):
        if name in fields:
            raise StitchConfigError(
                f"continuous_batching_config: {name}={_short(fields[name])} is set by "
                "Stitch; leave it out"
            )
    route_paged_attention(model)
    compile_config = CompileConfig(
        backend=EngineBackend(backend), fullgraph=True, dynamic=True, mode="default"
    )
    return ContinuousBatchingConfig(
        varlen_compile_config=compile_config,
        decode_compile_config=copy.copy(compile_config),
        use_cuda_graph=False,
        max_blocks_per_request=0,
        auto_switch_to_flash=False,
        scheduler_type=scheduler_type(fields.pop("scheduler_type", "fifo")),
        **fields,
    )
