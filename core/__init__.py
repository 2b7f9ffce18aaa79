"""What codegen and runtime share, below both: the errors, the emitted contract, the key hash.

``errors``: the one error hierarchy (every user-reachable condition raises a
:class:`StitchError` naming the node, piece, field or file and the value).
``contract``: the names emitted source and its loader share.  ``hashing``:
the one key hash (``key_hash``).  Nothing here imports ``stitch.codegen``,
``stitch.runtime`` or torch.
"""

from . import contract
from .errors import (
    StitchArgumentError,
    StitchCacheError,
    StitchCodegenError,
    StitchConfigError,
    StitchError,
    StitchInputError,
    StitchLoadError,
    StitchModelError,
    StitchRuntimeError,
)

__all__ = [
    "StitchArgumentError",
    "StitchCacheError",
    "StitchCodegenError",
    "StitchConfigError",
    "StitchError",
    "StitchInputError",
    "StitchLoadError",
    "StitchModelError",
    "StitchRuntimeError",
    "contract",
]
