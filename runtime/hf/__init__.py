"""Stitch for transformers models (the ``stitch[hf]`` extra).

- :mod:`.ops`: ``stitch::hf_attention``, attention that writes into an output
  buffer (a default splitting op);
- :mod:`.attention`: the ``"stitch"`` attention implementation registered with
  transformers' ``AttentionInterface`` (:func:`register`);
- :mod:`.models`: tiny random-weight models per family, built from configs;
- :mod:`.decode`: greedy decoding with a static KV cache, one compiled graph
  for the prefill and one for every decode step.

The core (``stitch.runtime`` outside this package) never imports it; importing
it needs transformers (``pip install 'stitch[hf]'``).
"""

from __future__ import annotations

from stitch.codegen.errors import StitchConfigError

try:
    import transformers  # noqa: F401
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise StitchConfigError(
        "stitch.runtime.hf needs transformers: pip install 'stitch[hf]'"
    ) from exc

from .attention import ATTN_IMPLEMENTATION, register, stitch_attention_forward
from .models import (
    FAMILIES,
    Family,
    build_model,
    example_inputs,
    output_tensor,
    tiny_config,
)
from .ops import HF_ATTENTION_OP

__all__ = [
    "ATTN_IMPLEMENTATION",
    "FAMILIES",
    "Family",
    "HF_ATTENTION_OP",
    "build_model",
    "example_inputs",
    "output_tensor",
    "register",
    "stitch_attention_forward",
    "tiny_config",
]
