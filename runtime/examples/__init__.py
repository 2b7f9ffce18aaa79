"""The example models, their layer-name ops, their tensor-parallel variant and its launcher.

Importing this package registers the layer-name ops and, through
stitch.runtime.kernels, ``stitch::attention`` (the models' attention, with its
CPU kernel and, for CUDA tensors, the Triton kernel).  The core
(``stitch.runtime`` outside the outer packages) never imports it.
"""

from .. import kernels  # noqa: F401 - registers stitch::attention and its kernels
from . import ops  # noqa: F401 - registers the layer-name ops
from .models import (
    EXAMPLES,
    Example,
    LlamaConfig,
    LlamaModel,
    build_llama,
    llama_inputs,
    register_example,
)

__all__ = [
    "EXAMPLES",
    "Example",
    "LlamaConfig",
    "LlamaModel",
    "build_llama",
    "llama_inputs",
    "register_example",
]
