"""Pure code generation: split FX graph -> template context -> stitching source.

Nothing here executes user code or imports ``stitch.runtime``.  Its errors
live in ``stitch.core.errors``.
"""

from .execution import generate_execution_code, lower_execution
from .fingerprint import graph_hash, structural_hash
from .pieces import is_inlined_piece, module_path_of
from .split import OpMatcher, SplitItem, split_graph

__all__ = [
    "OpMatcher",
    "SplitItem",
    "generate_execution_code",
    "graph_hash",
    "structural_hash",
    "is_inlined_piece",
    "lower_execution",
    "module_path_of",
    "split_graph",
]
