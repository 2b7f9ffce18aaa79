"""A replica's turn at a unit: this process's lease (renewed while it
compiles), or its wait while another replica holds the lease."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Protocol

from .stores import SharedStore, StoreDown
from .units import Unit
from .waiting import Wait

log = logging.getLogger("stitch")


class SharedTier(Protocol):
    """What a turn uses of tier.py's ``SharedTier`` (which imports this module)."""

    store: SharedStore
    url: str
    owner: str
    wait_s: float
    lease_s: float
    alive: bool

    def fetch(self, root: str, unit: Unit) -> bool: ...

    def _down(self, exc: StoreDown) -> None: ...


@dataclasses.dataclass
class Lease:
    """This process's turn to compile a unit: held (renewed until released) or
    not (the store is off, or waiting ran out: compile without one)."""

    unit: Unit
    held: bool
    _stop: threading.Event = dataclasses.field(
        default_factory=threading.Event, compare=False, repr=False
    )


INSTALLED = "installed"


# NOTE: [the wait is not Lock's blocking acquire]
# The lease itself is redis-py's Lock (NOTE: [a lease is redis-py's Lock] in
# stores.py), but its blocking acquire does not fit the wait, and Lock has no
# renewal of its own.  A waiting replica usually ends its wait by installing
# the holder's entry, not by taking the lease (the holder publishes, then
# releases: a waiter that took the freed lease would compile the unit again),
# so each poll looks for the entry first; it also shows progress (NOTE: [a
# wait is visible by default] in waiting.py) and, in a tiered start, must not
# block at all (a serving process polls :meth:`Waiting.take`).
# ``Lock.acquire(blocking_timeout=...)`` only sleeps until the key is free.
# And ``Lock.extend``/``reacquire`` renew only when called: the holder's thread
# (:func:`keep_renewed`) calls ``reacquire`` every third of ``lease_s`` while
# it compiles, so a dead holder's lease lapses within ``lease_s``.


def keep_renewed(tier: SharedTier, lease: Lease) -> None:
    """Renew ``lease`` every third of ``tier.lease_s`` until it is released
    (its ``_stop`` set), lost or the store stops answering."""
    while not lease._stop.wait(tier.lease_s / 3):
        try:
            if not tier.store.renew_lease(lease.unit.name, tier.owner, tier.lease_s):
                log.debug("stitch cache: lost the lease of %s", lease.unit.name)
                return
        except StoreDown:
            return  # the compile's publish reports it


class Waiting:
    """A replica's turn while another one holds the unit's lease: :meth:`result`
    waits (at most ``cache_wait_s``) for the entry or the lease."""

    def __init__(self, tier: SharedTier, root: str, unit: Unit, serving: bool) -> None:
        self.tier = tier
        self.root = root
        self.unit = unit
        self.wait = Wait(tier.url, unit.name, tier.wait_s, serving)
        self.holder: str | None = None

    def take(self) -> Lease | None:
        """The lease when it is this process's now (or the wait ran out, or the
        store is down: compile here), else None (``holder`` holds it)."""
        tier = self.tier
        try:
            if tier.store.take_lease(self.unit.name, tier.owner, tier.lease_s):
                self.wait.end("lease")
                lease = Lease(self.unit, True)
                threading.Thread(
                    target=keep_renewed, args=(tier, lease), daemon=True
                ).start()
                return lease
            self.holder = tier.store.lease_holder(self.unit.name)
        except StoreDown as exc:
            tier._down(exc)
            return None
        if self.wait.waited >= tier.wait_s:
            self.wait.end("timeout")
            return Lease(self.unit, False)
        return None

    def result(self) -> Lease | str:
        """Wait: :data:`INSTALLED` once another replica's entry is installed,
        else this process's :class:`Lease` (the lease came free, the wait ran
        out, or the store went down)."""
        tier = self.tier
        while tier.alive:
            self.wait.tick(self.holder)
            time.sleep(min(0.5, tier.lease_s / 4))
            if tier.fetch(self.root, self.unit):
                self.wait.end("installed")
                return INSTALLED
            turn = self.take()
            if turn is not None:
                return turn
        self.wait.end("down")
        return Lease(self.unit, False)
