"""transformers' continuous batching engine as Stitch reads it: 5.17 (the GPU
image's), 5.23 and 5.24, the tested range (:data:`TESTED`).

NOTE: [transformers' engine across versions]
What Stitch reads from the engine moved between 5.17, 5.23 and 5.24:

- the attention name the engine calls for an SDPA model: 5.23 and 5.24 keep
  ``"sdpa"``; 5.17 switches the model to ``"paged|sdpa"`` while it runs (and
  to a flash implementation first, when one is installed:
  :func:`refuse_flash_switch`).  All three switch an eager model to
  ``"paged|eager"``;
- who writes the paged cache: through 5.23 the attention *function* does
  (the engine's ``cache=`` keyword flows through the model's ``**kwargs`` to
  it); in 5.24 the attention *module* does, before it calls the function:
  every model's forward takes ``cache`` (it was ``past_key_values``), the
  module calls ``cache.update(key, value, layer_idx, kwargs=kwargs)``, which
  is ``torch.compiler.disable``d, and the function gets no cache.  Stitch's
  saved forward therefore passes the engine's cache to the model under a
  keyword of its own (:data:`PAGED_CACHE`) and not as ``cache``: no
  transformers code reads that keyword, so neither the 5.24 module nor the
  5.17/5.23 function writes the cache, and only Stitch's op does (NOTE: [how
  the engine reaches the paged op] in engine.py);
- the paged cache: 5.23 and 5.24 have one allocator per layer group
  (``layer_to_allocator``, each with its key and value views into the one
  ``uint8`` ``cache_tensor``, sentinel row and window); 5.17 has
  ``layer_index_to_group_indices`` into shared ``key_cache``/``value_cache``
  lists, one sentinel row and per-layer windows (1: full attention);
- the config: 5.23's ``page_size`` is 5.17's ``block_size``, and 5.17 has no
  ``auto_switch_to_flash``; the batch's ``max_length_q/k`` are 5.17's
  ``max_seqlen_q/k``;
- capacity: 5.23 counts sectors of blocks per allocator, 5.17 blocks of one
  block manager.

Everything else Stitch uses (``generate_batch``, the batch's keyword
arguments, the scheduler mapping) is the same in all three.

NOTE: [the tested transformers range]
``pyproject.toml``'s ``hf`` extra allows :data:`TESTED` alone, and
``.ci/torch_versions.sh`` tests both ends (5.17 with torch 2.11, 5.24 with
torch 2.15; the main suite 5.24 with torch 2.13).  A release outside it,
installed by hand, gets one warning when an engine is configured
(:func:`check_tested`), and an engine forward that then fails to trace is
reported with both versions (:func:`untested_failure`) instead of Dynamo's
message.  Raising the cap: read the new release's engine and attention
modules against the notes above, make the suite pass on it, then change
:data:`TESTED`, the extra, the test extra's pin and the CI releases together
(tests/test_hf_engine.py checks that the extra and :data:`TESTED` agree).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, NamedTuple

import torch

from stitch.core.errors import StitchConfigError

from ..compat.versions import parse

log = logging.getLogger("stitch")

# The oldest and the newest transformers release CI tests (NOTE: [the tested
# transformers range]).
TESTED = ((5, 17), (5, 24))

# The keyword that carries the engine's paged cache from Stitch's saved forward
# to the attention functions (NOTE: [transformers' engine across versions]).
PAGED_CACHE = "stitch_paged_cache"

# The engine's batch arguments that are flash's, under either version's name.
FLASH_LENGTHS = ("max_length_q", "max_length_k", "max_seqlen_q", "max_seqlen_k")


class EngineKeyword(NamedTuple):
    """What one keyword of the engine's model call is, and what Stitch's saved
    forward does with it: ``"input"`` (a parameter of ``saved_step.PagedStep``),
    ``"dropped"`` (left out: ``meaning`` says why it may be) or ``"refused"``
    (must be None)."""

    meaning: str
    saved_forward: str


# NOTE: [the engine's keywords]
# Every keyword transformers' engine passes to the model's call.  The model
# passes them on to its attention functions, so Stitch's paged attention
# (engine.py) takes each of these besides attention.ARGUMENTS; the saved
# forward (saved_step.py) takes the inputs and refuses any other keyword.
ENGINE_KEYWORDS: dict[str, EngineKeyword] = {
    "input_ids": EngineKeyword("the new tokens, [1, tokens]", "input"),
    "position_ids": EngineKeyword("each new token's position", "input"),
    "attention_mask": EngineKeyword(
        "transformers' mask, built on the host; the op builds its own from the "
        "boundaries",
        "input",
    ),
    "cache": EngineKeyword(
        "the PagedAttentionCache: the layer's cache rows and allocator (passed on "
        "to the attention functions as PAGED_CACHE)",
        "input",
    ),
    "read_index": EngineKeyword(
        "per allocator: the cache rows of every sequence's keys", "input"
    ),
    "write_index": EngineKeyword(
        "per allocator: the cache row of every new token", "input"
    ),
    "cu_seq_lens_q": EngineKeyword("the sequences' query boundaries", "input"),
    "cu_seq_lens_k": EngineKeyword(
        "per layer type: the sequences' key boundaries", "input"
    ),
    "logits_to_keep": EngineKeyword("the model's head; not attention's", "input"),
    **{
        name: EngineKeyword("flash's; the op reads the boundaries", "dropped")
        for name in FLASH_LENGTHS
    },
    "block_table": EngineKeyword("flash's decode fast path; must be None", "refused"),
    "logits_indices": EngineKeyword(
        "the engine's sampling (passed as logits_to_keep); not attention's",
        "dropped",
    ),
    "logits_processor_args": EngineKeyword(
        "the engine's sampling, after the forward; not attention's", "dropped"
    ),
    "is_causal": EngineKeyword(
        "the op is causal within each sequence (5.23 passes it)", "dropped"
    ),
    "use_cache": EngineKeyword("the paged cache is written by the op", "dropped"),
}


def installed_version() -> str:
    """transformers' version string, as installed: what the range check reads
    (a test sets it)."""
    import transformers

    return transformers.__version__


def version() -> tuple[int, int]:
    """transformers' ``(major, minor)``, which the compat choices here read
    (read directly: :func:`installed_version` is the range check's seam)."""
    import transformers

    return parse(transformers.__version__)


def tested_range() -> str:
    (a, b), (c, d) = TESTED
    return f"{a}.{b} to {c}.{d}"


def is_tested(release: str) -> bool:
    return TESTED[0] <= parse(release) <= TESTED[1]


@functools.cache
def check_tested(release: str | None = None) -> bool:
    """Warn once per release when transformers ``release`` (the installed one
    by default) is outside the tested range; whether it is inside."""
    release = installed_version() if release is None else release
    inside = is_tested(release)
    if not inside:
        log.warning(
            "stitch: transformers %s is outside the range Stitch's engine route is "
            "tested with (%s); its paged attention and cache may have moved "
            "(pip install 'stitch[hf]' installs a tested release)",
            release,
            tested_range(),
        )
    return inside


def untested_failure(error: BaseException, release: str | None = None) -> None:
    """Raise a ``StitchConfigError`` naming transformers' version and the tested
    range when ``error`` (the engine forward's compile failing) came under a
    release outside that range; return otherwise."""
    release = installed_version() if release is None else release
    if is_tested(release):
        return
    raise StitchConfigError(
        f"transformers {release} is outside the range Stitch's engine route is "
        f"tested with ({tested_range()}), and the engine's forward could not be "
        f"compiled under it ({type(error).__name__}: {str(error).splitlines()[0]}); "
        "install a tested release: pip install 'stitch[hf]'"
    ) from error


def engine_attention_name() -> str:
    """The attention name the engine calls for a model built with ``"sdpa"``."""
    return "sdpa" if version() >= (5, 23) else "paged|sdpa"


# The name the engine calls for a model built with "eager" (Gemma 2, GPT-OSS:
# transformers has no SDPA for them), in 5.17, 5.23 and 5.24 alike.
EAGER_PAGED = "paged|eager"


def engine_attention_names() -> tuple[str, str]:
    """The names Stitch wraps: the engine's SDPA name and its eager one."""
    return engine_attention_name(), EAGER_PAGED


def accepted_implementations() -> tuple[str, ...]:
    """What a model may be built with for Stitch's engine route."""
    sdpa = ("sdpa",) if version() >= (5, 23) else ("sdpa", "paged|sdpa")
    return (*sdpa, "eager", EAGER_PAGED)


def refuse_flash_switch(model: torch.nn.Module) -> None:
    """5.17 switches an SDPA model that supports flash to flash attention when a
    flash package is installed; Stitch's op would then not be called.

    NOTE: [SDPA on CUDA under 5.17]
    This refuses only where ``flash_attn`` or ``kernels`` is importable.  The
    GPU image (torch 2.11, transformers 5.17) has neither: its package list
    names none, and ``scripts/gpu_check.sh`` prints both as absent (an H200,
    2026-11-26, docs/gpu/h200_window_1.md), where the engine's SDPA tests ran
    through Stitch's op."""
    if version() >= (5, 23):
        return
    from transformers.utils import (
        is_flash_attn_2_available,
        is_flash_attn_3_available,
    )

    implementation = model.config._attn_implementation
    if (
        implementation in ("sdpa", "eager")
        and getattr(model, "_supports_flash_attn", False)
        and (
            is_flash_attn_3_available(kernels_fallback_ok=True)
            or is_flash_attn_2_available(kernels_fallback_ok=True)
        )
    ):
        raise StitchConfigError(
            f"{type(model).__name__}: transformers 5.17's engine would switch "
            f"attn_implementation={implementation!r} to flash attention (installed "
            "here), which Stitch's paged op does not take; build the model with "
            f"attn_implementation='paged|{implementation}'"
        )


@dataclasses.dataclass(frozen=True)
class LayerCache:
    """One layer's part of the paged cache, as ``stitch::paged_attention`` takes it."""

    k: torch.Tensor
    v: torch.Tensor
    # Which entry of the batch's read_index and write_index lists is this layer's.
    group: int
    # The key of the batch's cu_seq_lens_k for this layer.
    layer_type: str
    sentinel: int
    # 0: full attention.
    window: int


def layer_cache(cache: Any, layer_idx: int) -> LayerCache:
    if hasattr(cache, "layer_to_allocator"):
        allocator = cache.layer_to_allocator[layer_idx]
        k, v = allocator._kv_token_views[layer_idx]
        sliding = allocator.layer_type == "sliding_attention"
        return LayerCache(
            k,
            v,
            allocator.index,
            allocator.layer_type,
            allocator.sentinel_index,
            allocator.sliding_window if sliding else 0,
        )
    group, in_group = cache.layer_index_to_group_indices[layer_idx]
    window = cache.sliding_windows[layer_idx]
    return LayerCache(
        cache.key_cache[in_group],
        cache.value_cache[in_group],
        group,
        "full_attention" if window == 1 else "sliding_attention",
        cache.sentinel_index,
        0 if window == 1 else window,
    )


def layer_indices(cache: Any) -> list[int]:
    if hasattr(cache, "layer_to_allocator"):
        return sorted(cache.layer_to_allocator)
    return sorted(cache.layer_index_to_group_indices)


def cache_layout(cache: Any) -> str:
    """The layout of every layer's cache, as a string (NOTE: [what keys the
    engine's saved forward] in saved_step.py)."""
    layers = []
    for i in layer_indices(cache):
        c = layer_cache(cache, i)
        layers.append(
            (
                i,
                c.group,
                c.layer_type,
                c.sentinel,
                c.window,
                tuple(c.k.shape),
                str(c.k.dtype),
            )
        )
    return repr(layers)


def page_size(cache: Any) -> int:
    if hasattr(cache, "cache_allocators"):
        return min(a.tokens_per_page for a in cache.cache_allocators.values())
    return cache.block_size


def fits(cache: Any, tokens: int) -> bool:
    """Whether one request storing ``tokens`` tokens fits the whole empty cache."""
    if hasattr(cache, "cache_allocators"):
        probe = "stitch capacity probe"  # a request id no block table holds
        sectors = sum(
            -(
                -allocator.needs_new_blocks(probe, 0, tokens)
                // allocator.blocks_per_sector
            )
            for allocator in cache.cache_allocators.values()
        )
        return sectors <= cache.num_sectors
    blocks = -(-tokens // cache.block_size)
    needed = sum(
        min(blocks, getattr(m, "_max_blocks_per_request", blocks))
        for m in cache.group_cache_managers
    )
    return needed <= cache.num_blocks


def config_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """``ContinuousBatchingConfig`` fields in this version's names: ``page_size``
    is 5.17's ``block_size``; 5.17 has no ``auto_switch_to_flash``."""
    out = dict(fields)
    if version() < (5, 23):
        if "page_size" in out:
            out["block_size"] = out.pop("page_size")
        out.pop("auto_switch_to_flash", None)
    return out
