"""What codegen and runtime share, below both: the errors and the emitted contract.

``errors``: the one error hierarchy (every user-reachable condition raises a
:class:`StitchError` naming the node, piece, field or file and the value).
``contract``: the names emitted source and its loader share.  Nothing here
imports ``stitch.codegen``, ``stitch.runtime`` or torch.
"""

from . import contract
from .errors import (
    StitchCacheError,
    StitchCodegenError,
    StitchConfigError,
    StitchError,
    StitchInputError,
    StitchLoadError,
    StitchRuntimeError,
)

__all__ = [
    "StitchCacheError",
    "StitchCodegenError",
    "StitchConfigError",
    "StitchError",
    "StitchInputError",
    "StitchLoadError",
    "StitchRuntimeError",
    "contract",
]
