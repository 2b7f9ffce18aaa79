"""The shared store's size cap: orphaned blobs, then the least recently used entries.

NOTE: [the store's eviction policy]
``cache_store_max_bytes`` caps the bytes of every blob the store holds: those
its entries name and the orphans no entry names (left by a publisher killed
after its blobs, or by an entry replaced with other files).  After each
publish, with a cap set:

1. Orphans whose stamp is older than the lease (``cache_lease_s``) are
   deleted.  A publish stamps its blobs before it uploads them and again just
   before its manifest, so a blob younger than that may be an upload in
   progress: it is counted, and kept.
2. While the store holds more than the cap, the entry used least recently
   (published or installed last the longest ago; every replica's fetch counts
   as a use) is removed: its manifest first, then its blobs that no remaining
   entry names.  The entry just published is never removed, so one entry
   larger than the cap still stays.  Entries that do not verify (unsigned,
   another key, damaged) go before any that do; until then the blobs they
   list are counted and kept.

Replicas evicting at once may remove a blob another entry still names; that
entry is then refused when fetched ("blob ... is gone"), compiled again and
published again.  Without a cap nothing is removed, orphans included.
"""

from __future__ import annotations

import logging

from ..codec import RecordError
from .manifest import FleetKey, SharedEntry, unverified
from .stores import SharedStore

log = logging.getLogger("stitch")


def collect_orphans(
    store: SharedStore, named: set[str], lease_s: float
) -> tuple[list[str], int]:
    """Delete the blobs no entry names (not in ``named``) stamped longer than
    ``lease_s`` ago; the blobs deleted, and the bytes of the younger orphans kept."""
    collected, young = [], 0
    for sha, size, age in store.blob_ages():
        if sha in named:
            continue
        if age > lease_s:
            store.delete_blob(sha)
            collected.append(sha)
        else:
            young += size
    return collected, young


def evict(
    store: SharedStore, key: FleetKey, *, max_bytes: int, lease_s: float, keep: str
) -> list[str]:
    """Collect orphans older than ``lease_s``, then remove entries, least
    recently used first, until ``store`` holds at most ``max_bytes``; the names
    of the entries removed (``keep`` never is).  ``key`` tells the entries
    that verify from those that do not."""
    # name -> (stored bytes, the verified entry or None, the files it lists)
    entries: dict[str, tuple[bytes, SharedEntry | None, SharedEntry | None]] = {}
    for name, _ in store.by_age():
        stored = store.get_entry(name)
        if stored is None:
            continue
        try:
            entry = key.open(stored, name)
            entries[name] = (stored, entry, entry)
        except RecordError:
            entries[name] = (stored, None, unverified(stored, name))
    order = [n for n, (_, e, _) in entries.items() if e is None]
    order += [n for n, (_, e, _) in entries.items() if e is not None]

    def blobs(names: object) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in names:  # type: ignore[attr-defined]
            listed = entries[n][2]
            for f in listed.files if listed is not None else ():
                out[f.sha256] = f.size
        return out

    held = blobs(entries)
    collected, young = collect_orphans(store, set(held), lease_s)
    removed = []
    for name in order:
        if sum(held.values()) + young <= max_bytes:
            break
        if name == keep:
            continue
        stored = entries[name][0]
        if not store.delete_entry(name, stored):
            continue  # changed since read: another replica's business now
        gone = set(blobs([name]))
        del entries[name]
        held = blobs(entries)
        for sha in gone - set(held):
            store.delete_blob(sha)
        removed.append(name)
    if collected:
        log.info(
            "stitch cache: deleted %d orphaned blob(s) from %s (no entry names "
            "them, stamped over %.0fs ago)",
            len(collected),
            store.url,
            lease_s,
        )
    if removed:
        log.info(
            "stitch cache: evicted %d entr%s from %s (cap %d bytes): %s",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            store.url,
            max_bytes,
            ", ".join(removed),
        )
    return removed
