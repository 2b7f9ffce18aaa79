"""Pure code generation: split FX graph -> template context -> stitching source.

Nothing here executes user code or imports ``stitch.runtime``.
"""

from .errors import (
    StitchCacheError,
    StitchCodegenError,
    StitchConfigError,
    StitchError,
    StitchLoadError,
    StitchRuntimeError,
)
from .execution import (
    generate_execution_code,
    is_inlined_piece,
    lower_execution,
    module_path_of,
)
from .fingerprint import graph_hash, structural_hash
from .split import OpMatcher, SplitItem, split_graph

__all__ = [
    "OpMatcher",
    "SplitItem",
    "StitchCacheError",
    "StitchCodegenError",
    "StitchConfigError",
    "StitchError",
    "StitchLoadError",
    "StitchRuntimeError",
    "generate_execution_code",
    "graph_hash",
    "structural_hash",
    "is_inlined_piece",
    "lower_execution",
    "module_path_of",
    "split_graph",
]
