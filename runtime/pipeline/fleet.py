"""A backend call's turn in the fleet: install its entry from the shared store,
or compile it under the store's lease and publish it after.

See NOTE: [the shared tier never stops a run] in ``store/shared/tier.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import CompilationConfig
from ..store.cache import CompileCache
from ..store.shared.tier import INSTALLED, Lease, SharedTier
from ..store.shared.units import entry_unit
from .entry import MAX_ENTRIES


class FleetTurn:
    """Opened with the call's cache entry; :meth:`end` once the call is done."""

    def __init__(self, config: CompilationConfig) -> None:
        self.tier = SharedTier.of(config)
        self.lease: tuple[str, Lease] | None = None

    def open(
        self,
        cache: CompileCache | None,
        reopen: Callable[[], CompileCache | None],
    ) -> CompileCache | None:
        """The entry to use: ``cache``, or after a local miss the entry installed
        from the store (``reopen`` opens it again, its guards checked), or
        ``cache`` with this process holding the lease to compile it."""
        for _ in range(MAX_ENTRIES):
            if self.tier is None or cache is None or cache.index is not None:
                return cache
            turn = self.tier.before_compile(
                cache.root, entry_unit(cache.root, cache.directory)
            )
            if isinstance(turn, Lease):
                self.lease = (cache.root, turn)
                return cache
            assert turn == INSTALLED
            cache = reopen()
        return cache

    def end(self, compiled: bool) -> None:
        """Publish what was compiled (``compiled``: the call finished) and let
        the lease go."""
        if self.tier is not None and self.lease is not None:
            root, lease = self.lease
            self.lease = None
            self.tier.after_compile(root, lease, compiled)
