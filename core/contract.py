"""The emitted-module contract: the names stitching source and its loader share.

Emitted source defines ``execution_fn(<graph inputs>, *, __vllm_submods__)`` (or
``*, __vllm_dispatch__`` with a hoisted size dispatch).  Its first statement
unpacks the compiled pieces into locals named after them
(``submod_0, submod_2 = __vllm_submods__``: piece ``i`` is item ``i``), and it
reads constant ``j`` as ``__vllm_consts__[j]``, a global the loader provides.
Every module that writes or reads such source takes these names from here.
"""

from __future__ import annotations

# Keyword-only parameter of execution_fn: the list of compiled pieces.
SUBMODS_NAME = "__vllm_submods__"
# Keyword-only parameter replacing SUBMODS_NAME with a hoisted dispatch:
# runtime size -> list of compiled pieces.
DISPATCH_NAME = "__vllm_dispatch__"
# Module global: the tuple of constants the source reads by slot.
CONSTS_NAME = "__vllm_consts__"
# Name prefix of the module-level functions that run splitting pieces.
INLINED_PREFIX = "__vllm_inlined_submods__"
# Keyword-only parameter of the profiling variant of execution_fn (see NOTE:
# [the profiling variant] in execution.py): the object that times each piece
# call and names it in torch.profiler traces.
RANGES_NAME = "__stitch_ranges__"
# The function the loader binds and returns.
FUNCTION_NAME = "execution_fn"
# Version of the emitted format, written into the provenance header.  Bumped
# whenever the shape of the emitted source changes.
FORMAT_VERSION = 5

__all__ = [
    "CONSTS_NAME",
    "DISPATCH_NAME",
    "FORMAT_VERSION",
    "FUNCTION_NAME",
    "INLINED_PREFIX",
    "RANGES_NAME",
    "SUBMODS_NAME",
]
