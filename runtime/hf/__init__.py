"""Stitch for transformers models (the ``stitch[hf]`` extra).

- :mod:`.attention`: the ``"stitch"`` attention implementation registered with
  transformers' ``AttentionInterface`` (:func:`register`), each call one
  ``stitch::hf_attention`` (a default splitting op; the op and the other
  attention ops live in stitch.runtime.kernels);
- :mod:`.tiny_models`: tiny random-weight models per family, built from configs;
  :mod:`.checkpoint` a checkpoint folder with its weights (``--model DIR``);
- :mod:`.serving`: a causal LM served in the token layout, its attention
  modules owning their KV caches (CUDA graph padding leaves them alone);
- :mod:`.engine`: transformers' continuous batching (``generate_batch``)
  compiled by Stitch, its paged attention routed to ``stitch::paged_attention``;
  :mod:`.saved_step` the engine's model call as a saved forward.

The core (``stitch.runtime`` outside this package) never imports it; importing
it needs transformers (``pip install 'stitch[hf]'``).
"""

from __future__ import annotations

from stitch.core.errors import StitchConfigError

try:
    import transformers  # noqa: F401
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise StitchConfigError(
        "stitch.runtime.hf needs transformers: pip install 'stitch[hf]'"
    ) from exc

from ..kernels import HF_ATTENTION_OP, PAGED_ATTENTION_OP
from .attn_implementation import ATTN_IMPLEMENTATION, stitch_attention_forward
from .engine import continuous_batching_config, route_paged_attention
from .registration import register
from .serving import (
    PAD_VALUES,
    attach_kv_caches,
    build_serving_llama,
    reset_kv_caches,
    serving_inputs,
)
from .tiny_models import (
    FAMILIES,
    Family,
    build_model,
    example_inputs,
    output_tensor,
    tiny_config,
)

__all__ = [
    "ATTN_IMPLEMENTATION",
    "FAMILIES",
    "Family",
    "HF_ATTENTION_OP",
    "PAD_VALUES",
    "PAGED_ATTENTION_OP",
    "attach_kv_caches",
    "build_serving_llama",
    "build_model",
    "continuous_batching_config",
    "example_inputs",
    "output_tensor",
    "register",
    "reset_kv_caches",
    "route_paged_attention",
    "serving_inputs",
    "stitch_attention_forward",
    "tiny_config",
]
