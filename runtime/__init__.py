"""Everything that runs: loading emitted source, compiled pieces, caches."""

from .loader import compile_execution_fn, load_execution_module, source_filename

__all__ = ["compile_execution_fn", "load_execution_module", "source_filename"]
