"""What a tier's start reads of the backend call it serves (``Compilation``
has every one of these): the typed face of that tie, so that
``compile_workers.start_tier`` reads no attribute it does not declare."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ...config import CompilationConfig
from ...workers.spawned_pool import SpawnedPool
from ..compilers import CompilerAdapter
from ..entry import EntryGuards
from ..fake_propagation import PieceArgs
from ..fleet import FleetCacheSession
from ..piece_plan import PiecePlan
from ..piecewise import RangeWarnings
from .deferred import DeferredSource


class TierSource(Protocol):
    """A backend call whose missing pieces a tier compiles in workers."""

    config: CompilationConfig
    # The call's artifact source: a DeferredSource, since a tier starts only
    # where pieces were deferred (``source.deferred`` not empty).
    source: DeferredSource
    # Ranges of sizes the pieces were compiled for, warned about once.
    range_warnings: RangeWarnings
    # The guards the call holds, the cache entry's and the shape env's.
    entry_guards: EntryGuards
    # Each piece's plan (its targets, compile key), and its fake inputs.
    plans: Mapping[str, PiecePlan]
    piece_args: PieceArgs
    # "fork" or "spawn" (NOTE: [forked or spawned compile workers]).
    worker_start: str
    # The runtime size the pieces dispatch on (``size.find_size``), if any.
    size: Any
    adapter: CompilerAdapter
    spawned_pool: SpawnedPool
    # The fleet's session: whether this replica waits for another's entry.
    fleet: FleetCacheSession
