"""The example models and what they need: their ops, kernels and tensor-parallel variant.

Importing this package registers ``stitch::attention`` (with its CPU kernel and,
for CUDA tensors, the Triton kernel) and the layer-name ops.  The core
(``stitch.runtime`` outside this package) never imports it.
"""

from . import (
    ops,  # noqa: F401 - registers the ops
    triton_attention,  # noqa: F401 - registers the CUDA kernel
)
from .models import (
    DEFAULT_SPLITTING_OPS,
    EXAMPLES,
    Attention,
    BareAttention,
    DecoderLayer,
    Example,
    LlamaConfig,
    LlamaModel,
    RMSNorm,
    build_llama,
    llama_inputs,
    register_example,
    trace_module,
)
from .ops import ATTENTION_OP, attention_reference

__all__ = [
    "ATTENTION_OP",
    "Attention",
    "BareAttention",
    "DEFAULT_SPLITTING_OPS",
    "DecoderLayer",
    "EXAMPLES",
    "Example",
    "LlamaConfig",
    "LlamaModel",
    "RMSNorm",
    "attention_reference",
    "build_llama",
    "llama_inputs",
    "register_example",
    "trace_module",
]
