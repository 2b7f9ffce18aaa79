"""A replica's turn at a unit of the fleet's cache: this process's lease
(renewed while it compiles), or its wait while another replica holds the
lease; and the turn taken before a compile and given back after it."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from .fleet_cache import FleetCache
from .stores import StoreDown
from .units import Unit
from .waiting import Wait

log = logging.getLogger("stitch")


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


def keep_renewed(cache: FleetCache, lease: Lease) -> None:
    """Renew ``lease`` every third of ``cache.lease_s`` until it is released
    (its ``_stop`` set), lost or the store stops answering."""
    while not lease._stop.wait(cache.lease_s / 3):
        try:
            if not cache.store.renew_lease(lease.unit.name, cache.owner, cache.lease_s):
                log.debug("stitch cache: lost the lease of %s", lease.unit.name)
                return
        except StoreDown:
            return  # the compile's publish reports it


class Waiting:
    """A replica's turn while another one holds the unit's lease: :meth:`result`
    waits (at most ``cache_wait_s``) for the entry or the lease."""

    def __init__(self, cache: FleetCache, root: str, unit: Unit, serving: bool) -> None:
        self.cache = cache
        self.root = root
        self.unit = unit
        self.wait = Wait(cache.url, unit.name, cache.wait_s, serving)
        self.holder: str | None = None

    def take(self) -> Lease | str | None:
        """The lease when it is this process's now (or the wait ran out, or the
        store is down: compile here), :data:`INSTALLED` when the holder's
        entry came with its lease, else None (``holder`` holds it)."""
        cache = self.cache
        try:
            if cache.store.take_lease(self.unit.name, cache.owner, cache.lease_s):
                lease = Lease(self.unit, True)
                # The holder publishes, then lets the lease go: a look for the
                # entry just before it was published finds the lease free just
                # after (CI's waiter compiled the unit a second time).
                if cache.fetch(self.root, self.unit):
                    end_turn(cache, self.root, lease, False)
                    self.wait.end("installed")
                    return INSTALLED
                self.wait.end("lease")
                threading.Thread(
                    target=keep_renewed, args=(cache, lease), daemon=True
                ).start()
                return lease
            self.holder = cache.store.lease_holder(self.unit.name)
        except StoreDown as exc:
            cache.went_down(exc)
            return None
        if self.wait.waited >= cache.wait_s:
            self.wait.end("timeout")
            return Lease(self.unit, False)
        return None

    def result(self) -> Lease | str:
        """Wait: :data:`INSTALLED` once another replica's entry is installed,
        else this process's :class:`Lease` (the lease came free, the wait ran
        out, or the store went down)."""
        cache = self.cache
        while cache.alive:
            self.wait.tick(self.holder)
            time.sleep(min(0.5, cache.lease_s / 4))
            if cache.fetch(self.root, self.unit):
                self.wait.end("installed")
                return INSTALLED
            turn = self.take()
            if turn is not None:
                return turn
        self.wait.end("down")
        return Lease(self.unit, False)


def wait_turn(cache: FleetCache, root: str, unit: Unit) -> Lease | str:
    """:data:`INSTALLED` when the unit is installed now (from the store, or
    after another replica's compile), else this process's :class:`Lease`."""
    turn = first_turn(cache, root, unit)
    return turn.result() if isinstance(turn, Waiting) else turn


def first_turn(
    cache: FleetCache, root: str, unit: Unit, serving: bool = False
) -> Lease | str | Waiting:
    """:func:`wait_turn` without its wait: a :class:`Waiting` when
    another replica holds the lease (``serving``: this process serves on
    uncompiled pieces meanwhile, NOTE: [a tiered start])."""
    if not cache.alive:
        return Lease(unit, False)
    if cache.fetch(root, unit):
        return INSTALLED
    if not cache.alive:  # the look found the store down: no second call
        return Lease(unit, False)
    waiting = Waiting(cache, root, unit, serving)
    turn = waiting.take()
    if turn is None and not cache.alive:
        return waiting.result()
    return waiting if turn is None else turn


def end_turn(cache: FleetCache, root: str, lease: Lease | str, published: bool) -> None:
    """Publish the unit (when ``published``: the compile finished) and let
    the lease go."""
    if not isinstance(lease, Lease):
        return
    lease._stop.set()
    try:
        if published:
            cache.publish(root, lease.unit)
    finally:
        if lease.held and cache.alive:
            try:
                cache.store.release_lease(lease.unit.name, cache.owner)
            except StoreDown as exc:
                cache.went_down(exc)
