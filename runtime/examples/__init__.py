"""The example models, their layer-name ops, their tensor-parallel variant and its launcher.

Importing this package registers the layer-name ops and, through
stitch.runtime.kernels, ``stitch::attention`` (the models' attention, with its
CPU kernel and, for CUDA tensors, the Triton kernel).  The core
(``stitch.runtime`` outside the outer packages) never imports it.
"""

from .. import kernels  # noqa: F401 - registers stitch::attention and its kernels
from ..kernels.attention import ATTENTION_OP, attention_reference
from . import ops  # noqa: F401 - registers the layer-name ops
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
