"""A backend call's session with the fleet's shared store: install its entry
from the store, or compile it under the store's lease and publish it after;
and, when it compiles, why it did not start warm.

See NOTE: [the fleet's cache never stops a run] in ``store/shared/fleet_cache.py``
and
NOTE: [an entry records what its key covers] in ``store/explain.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from stitch.codegen.fingerprint import describe_example, graph_lines

from ..config import CompilationConfig
from ..store.cache import CompileCache
from ..store.explain import EntryFactors, entry_factors, explain_miss, save_factors
from ..store.shared.fleet_cache import FleetCache
from ..store.shared.lease import (
    INSTALLED,
    Lease,
    Waiting,
    end_turn,
    first_turn,
)
from ..store.shared.units import entry_unit
from .entry import MAX_ENTRIES

log = logging.getLogger("stitch")


class FleetCacheSession:
    """Opened with the call's cache entry; :meth:`end` once the call is done."""

    def __init__(self, config: CompilationConfig) -> None:
        self.config = config
        self.shared = FleetCache.of(config.cache)
        self.lease: tuple[str, Lease] | None = None
        # Another replica holds the lease and this call serves meanwhile.
        self.waiting: Waiting | None = None
        self.factors: EntryFactors | None = None
        # Why this call compiles: what differs from the nearest cached entry.
        self.why_cold: str | None = None

    def open(
        self,
        cache: CompileCache | None,
        reopen: Callable[[], CompileCache | None],
        serve_meanwhile: bool = False,
    ) -> CompileCache | None:
        """The entry to use: ``cache``, or after a local miss the entry installed
        from the store (``reopen`` opens it again, its guards checked), or
        ``cache`` with this process holding the lease to compile it.  With
        ``serve_meanwhile`` (a tiered start), a lease another replica holds
        does not wait here: ``cache`` is returned, with :attr:`waiting` set."""
        for _ in range(MAX_ENTRIES):
            if self.shared is None or cache is None or cache.index is not None:
                return cache
            unit = entry_unit(cache.root, cache.directory)
            turn = first_turn(self.shared, cache.root, unit, serve_meanwhile)
            if isinstance(turn, Waiting) and not serve_meanwhile:
                turn = turn.result()
            if isinstance(turn, Waiting):
                self.waiting = turn
                return cache
            if isinstance(turn, Lease):
                self.lease = (cache.root, turn)
                return cache
            assert turn == INSTALLED
            cache = reopen()
        return cache

    def take_turn(self) -> bool:
        """After :meth:`open` left this call waiting: wait for the other
        replica's entry (True: installed) or for this process's turn to
        compile (False: the lease is this call's, or the wait ran out)."""
        assert self.waiting is not None
        waiting, self.waiting = self.waiting, None
        turn = waiting.result()
        if isinstance(turn, Lease):
            self.lease = (waiting.root, turn)
            return False
        return True

    def end(self, compiled: bool) -> None:
        """Publish what was compiled (``compiled``: the call finished) and let
        the lease go."""
        if self.shared is not None and self.lease is not None:
            root, lease = self.lease
            self.lease = None
            end_turn(self.shared, root, lease, compiled)

    def explain(
        self,
        cache: CompileCache | None,
        gm: fx.GraphModule,
        fake_inputs: Sequence[Any],
        group: str,
        graph_key: str,
    ) -> None:
        """On a miss (``cache`` has no index): the factors this entry will record,
        and one line on what differs from the nearest entry of the cache."""
        if cache is None or cache.index is not None:
            return
        devices = [v.device.type for v in fake_inputs if isinstance(v, torch.Tensor)]
        lines = graph_lines(gm) + [describe_example(v) for v in fake_inputs]
        self.factors = entry_factors(
            self.config.hash_factors(), self.config.backend, devices, group, lines
        )
        self.why_cold = explain_miss(cache.root, cache.directory, self.factors)
        if self.why_cold:
            log.info("stitch: graph %s starts cold: %s", graph_key[:12], self.why_cold)

    def record(self, cache: CompileCache | None) -> None:
        """Write the factors of the entry this call compiled."""
        if self.factors is None or cache is None or not cache.writable:
            return
        try:
            save_factors(cache.directory, cache.root, self.factors)
        except OSError as exc:
            log.debug(
                "stitch: cannot write the factors of %s (%s)", cache.directory, exc
            )
