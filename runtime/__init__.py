"""Everything that runs: loading emitted source, compiled pieces, caches."""

from .backend import CompiledModel, StitchBackend, stitch_backend
from .config import CompilationConfig, CUDAGraphMode
from .counter import compilation_counter
from .loader import compile_execution_fn, load_execution_module, source_filename
from .piecewise import PiecewiseBackend

__all__ = [
    "CUDAGraphMode",
    "CompilationConfig",
    "CompiledModel",
    "PiecewiseBackend",
    "StitchBackend",
    "compilation_counter",
    "compile_execution_fn",
    "load_execution_module",
    "source_filename",
    "stitch_backend",
]
