"""Opening a graph's cache entry: the one whose recorded guards hold for this call.

See NOTE: [the guards a backend call adds are part of its cache entry] in
``compat/shapes.py``.  A graph key names a chain of entries: the first one
compiled, then, for inputs its guards reject, an entry under the key chained
with those guards, and so on.  Almost every graph has one entry with no guards.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from ..compat.shapes import check_guards
from ..config import CompilationConfig
from ..store.cache import CompileCache

log = logging.getLogger("stitch")

# Entries per graph key, one per specialization its compiles made; past that
# the call compiles without the cache (one warning).
MAX_ENTRIES = 8


def open_entry(
    config: CompilationConfig, graph_key: str, config_hash: str, shape_env: Any
) -> tuple[CompileCache | None, tuple[str, ...]]:
    """The entry this call uses and its recorded guards (they hold here).

    An entry whose recorded guards all hold is used; the caller installs them
    as Dynamo's guards once the pieces are loaded, as the entry's compile made
    them.  An entry for other sizes is passed over for the next in the chain.
    """
    key = graph_key
    for _ in range(MAX_ENTRIES):
        cache = CompileCache.open(config, key, config_hash)
        guards = cache.index.guards if cache.index is not None else ()
        if not guards:
            return cache, ()
        why = check_guards(shape_env, guards) if shape_env is not None else "no sizes"
        if not why:
            return cache, guards
        log.debug(
            "stitch: cache entry %s is not for this call: %s", cache.directory, why
        )
        key = hashlib.sha256(f"{key}|{'|'.join(guards)}".encode()).hexdigest()
    log.warning(
        "stitch: graph %s has %d cache entries for other sizes; compiling it "
        "without the cache",
        graph_key[:12],
        MAX_ENTRIES,
    )
    return None, ()
