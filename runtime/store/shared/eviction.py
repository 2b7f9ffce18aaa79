"""The shared store's size cap: least recently used entries go first.

NOTE: [the store's eviction policy]
``cache_store_max_bytes`` caps the bytes of the distinct blobs the store's
entries name.  After each publish, while the store holds more, the entry used
least recently (published or installed last the longest ago; every replica's
fetch counts as a use) is removed: its manifest first, then its blobs that no
remaining entry names.  The entry just published is never removed, so one
entry larger than the cap still stays.  Entries that do not verify (unsigned,
another key, damaged) go before any that do.  Replicas evicting at once may
remove a blob another entry still names; that entry is then refused when
fetched ("blob ... is gone"), compiled again and published again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..codec import RecordError
from .manifest import SharedEntry

if TYPE_CHECKING:
    from .tier import SharedTier

log = logging.getLogger("stitch")


def evict(tier: SharedTier, keep: str) -> list[str]:
    """Remove entries, least recently used first, until the store is under the
    cap; the names removed."""
    entries: dict[str, tuple[bytes, SharedEntry | None]] = {}
    for name, _, stored in tier.entries():
        if stored is None:
            continue
        try:
            entries[name] = (stored, tier.key.open(stored, name))
        except RecordError:
            entries[name] = (stored, None)
    order = [n for n, (_, e) in entries.items() if e is None]
    order += [n for n, (_, e) in entries.items() if e is not None]

    def blobs(names: object) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in names:  # type: ignore[attr-defined]
            entry = entries[n][1]
            for f in entry.files if entry is not None else ():
                out[f.sha256] = f.size
        return out

    removed = []
    held = blobs(entries)
    for name in order:
        if sum(held.values()) <= tier.max_bytes:
            break
        if name == keep:
            continue
        stored, _ = entries[name]
        if not tier.store.delete_entry(name, stored):
            continue  # changed since read: another replica's business now
        gone = set(blobs([name]))
        del entries[name]
        held = blobs(entries)
        for sha in gone - set(held):
            tier.store.delete_blob(sha)
        removed.append(name)
    if removed:
        log.info(
            "stitch cache: evicted %d entr%s from %s (cap %d bytes): %s",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            tier.url,
            tier.max_bytes,
            ", ".join(removed),
        )
    return removed
