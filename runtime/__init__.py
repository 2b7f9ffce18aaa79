"""Everything that runs: the torch.compile backend, loading emitted source, the store, CUDA graphs.

Parts (see docs/architecture.md):

- ``pipeline``: the backend: split, plan each piece, compile it (or load it), stitch;
  ``aot_compile``, which saves the compiled forward and loads it without Dynamo;
- ``passes``: custom Inductor passes run on every compiled piece;
- ``store``: the persistent cache, its index, and the debug dump;
- ``cudagraph``: padding, capture per size, replay;
- ``loader``: compile emitted source and bind it to its pieces;
- ``examples``: the example models with their ops and kernels (not imported here);
- ``cli``: the ``stitch`` command (not imported here);
- ``hf``: transformers models, the ``hf`` extra (not imported here).
"""

from .config import CompilationConfig, CUDAGraphMode
from .counter import compilation_counter
from .loader import compile_execution_fn, load_execution_module, source_filename
from .pipeline.api import (
    CompiledModel,
    PiecewiseBackend,
    StitchBackend,
    StitchFunction,
    stitch_backend,
)
from .saved.aot import AOTCompiledModel, aot_compile

__all__ = [
    "AOTCompiledModel",
    "CUDAGraphMode",
    "CompilationConfig",
    "CompiledModel",
    "PiecewiseBackend",
    "StitchBackend",
    "StitchFunction",
    "aot_compile",
    "compilation_counter",
    "compile_execution_fn",
    "load_execution_module",
    "source_filename",
    "stitch_backend",
]
