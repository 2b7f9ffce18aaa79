"""Stitch's attention ops and their Triton kernels; needs only torch to import.

- :mod:`.attention`: ``stitch::attention``, decode attention over per-slot KV
  caches (the example models', and transformers models' with Stitch's serving
  caches); :mod:`.triton_attention` its CUDA kernel;
- :mod:`.hf_attention`: ``stitch::hf_attention``, attention into an output
  buffer (transformers' ``"stitch"`` attention implementation calls it);
- :mod:`.paged_attention`: ``stitch::paged_attention``, varlen attention over
  transformers' paged KV cache, which it writes; :mod:`.triton_paged` its CUDA
  kernel;
- :mod:`.optional_kernels`: the Triton kernel modules (``*_kernel.py``, the only modules
  that import Triton), loaded on an op's first CUDA call;
- :mod:`.static_launch`: prebuilt kernels, the ops' Triton kernels saved as
  cubins by the process that compiled them and launched by later ones through
  torch's static launcher (:mod:`.kernel_records`: their files on disk);
- :mod:`.schema`: an op's schema from its arguments' NamedTuple, and its
  registration with the dispatcher.

Importing this package registers the three ops, each with its torch
implementation (the CPU kernel), its fake and, for CUDA tensors, its Triton
launcher.  The core (``stitch.runtime`` outside the outer packages) never
imports it; this package imports none of the examples, the command line, hf,
vllm or the harnesses.
"""

from . import (
    triton_attention,  # noqa: F401 - registers stitch::attention's CUDA kernel
    triton_paged,  # noqa: F401 - registers stitch::paged_attention's CUDA kernel
)
from .attention import ATTENTION_OP, attention_reference
from .hf_attention import HF_ATTENTION_OP, hf_attention_reference
from .paged_attention import PAGED_ATTENTION_OP, paged_attention_reference

__all__ = [
    "ATTENTION_OP",
    "HF_ATTENTION_OP",
    "PAGED_ATTENTION_OP",
    "attention_reference",
    "hf_attention_reference",
    "paged_attention_reference",
]
