"""What ``stitch cache`` does with a shared store: list, verify, push, pull.

Reading goes through the fleet cache's own checks (the signature, then each blob's
sha256), so ``verify`` says exactly what a replica would refuse.
"""

from __future__ import annotations

import dataclasses
import time

from ..codec import RecordError
from ..digests import content_hash
from .fleet_cache import FleetCache
from .manifest import SharedEntry
from .units import Unit, local_units


@dataclasses.dataclass(frozen=True)
class StoredEntry:
    """One entry of the store as ``ls`` shows it (``entry`` None: refused)."""

    name: str
    last_used: float
    entry: SharedEntry | None
    problem: str


def stored_entries(cache: FleetCache, *, blobs: bool = False) -> list[StoredEntry]:
    """Every entry, least recently used first; ``blobs``: read and hash every
    blob too (``verify``), not only the signature (``ls``)."""
    out = []
    for name, when, stored in cache.entries():
        if stored is None:
            out.append(StoredEntry(name, when, None, "the manifest is gone"))
            continue
        try:
            entry = cache.key.open(stored, name)
        except RecordError as exc:
            out.append(StoredEntry(name, when, None, exc.detail))
            continue
        problem = ""
        if blobs:
            for f in entry.files:
                data = cache.store.get_blob(f.sha256)
                if data is None:
                    problem = f"blob {f.sha256[:12]} ({f.path}) is gone"
                elif content_hash(data) != f.sha256:
                    problem = f"blob of {f.path} does not match its sha256"
                if problem:
                    break
        out.append(StoredEntry(name, when, entry, problem))
    return out


def push(cache: FleetCache, root: str) -> list[tuple[Unit, bool]]:
    """Publish every unit of the cache at ``root``; each with whether the store
    holds it now."""
    return [(unit, cache.publish(root, unit)) for unit in local_units(root)]


def pull(cache: FleetCache, root: str, names: list[str]) -> list[tuple[str, bool]]:
    """Install the entries ``names`` (all when empty) into the cache at ``root``."""
    wanted = names or [name for name, _, _ in cache.entries()]
    out = []
    for name in wanted:
        folder = name.split("@", 1)[0]
        out.append((name, cache.fetch(root, Unit(name, folder))))
    return out


def age(seconds_since_epoch: float) -> str:
    ago = max(0.0, time.time() - seconds_since_epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if ago >= size:
            return f"{ago / size:.0f}{unit} ago"
    return f"{ago:.0f}s ago"
