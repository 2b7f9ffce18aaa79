"""The stitching source of a split graph: the cache entry's, else emitted anew."""

from __future__ import annotations

from typing import Any

import torch.fx as fx

from stitch.codegen import generate_execution_code, lower_execution

from ..store.cache import CompileCache
from ..store.index import SOURCE_FILE
from .warm_load import warm_step


def stitching_source(
    split_gm: fx.GraphModule, cache: CompileCache | None, dispatch_on: str | None
) -> tuple[str, list[str], list[Any], str | None]:
    """``(code, piece names, constants, the entry the code was read from)``; the
    entry is None when the code was emitted anew."""
    if cache is not None and cache.has_source():
        _, names, consts = lower_execution(split_gm, dispatch_on=dispatch_on)
        # NOTE: [a warm load that fails compiles instead] (warm_load.py)
        with warm_step(cache.directory, "source", SOURCE_FILE):
            code = cache.read_source(names, dispatch_on)
        if code is not None:
            return code, names, consts, cache.directory
    code, names, consts = generate_execution_code(split_gm, dispatch_on=dispatch_on)
    return code, names, consts, None
