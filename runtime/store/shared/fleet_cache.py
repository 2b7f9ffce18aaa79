"""``FleetCache``: the fleet's shared store behind the local cache, as this
process uses it.

On a local miss a replica installs the unit from the store (verified, then
through the local cache's atomic writes, markers last), or takes the unit's
lease and compiles it, or waits while another replica holds the lease (the
turns: ``lease.py``).  After a compile it publishes the unit's blobs, then
its signed manifest.

NOTE: [the fleet's cache never stops a run]
The store is an accelerator, never a dependency: every call has a timeout, the
first failure is one warning and turns the fleet's cache off for the rest of the
process (nothing more is fetched or published; the local cache goes on as
before), a refused entry is one warning naming it and is compiled again, and
a replica waits for another's compile at most ``cache_wait_s`` and then
compiles itself.  A wait is visible by default: see NOTE: [a wait is visible
by default] in ``waiting.py``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time

import torch

from stitch.core.errors import StitchError

from ...settings import CacheSettings
from .. import location
from ..codec import RecordError
from ..digests import content_hash, file_hash_or_none
from ..files import atomic_write, make_private_dirs
from ..trust import check_trusted
from .eviction import evict
from .manifest import FleetKey, SharedEntry
from .stores import SharedStore, StoreDown, open_store
from .units import Unit, collect, install_order

log = logging.getLogger("stitch")

URL_ENV = "STITCH_CACHE_URL"


class FleetCache:
    """One shared store, with the fleet key, as this process uses it."""

    _open: dict[str, FleetCache | None] = {}

    def __init__(self, store: SharedStore, key: FleetKey, settings: CacheSettings):
        self.store = store
        self.key = key
        self.url = store.url
        self.settle(settings)
        self.alive = True
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        # unit name -> the stored bytes refused (warned once; not fetched again)
        self.refused: dict[str, bytes] = {}

    def settle(self, settings: CacheSettings) -> None:
        """Take the waits and the cap of ``settings`` (the latest config to open
        this URL's cache sets them)."""
        self.wait_s = float(settings.cache_wait_s)
        self.lease_s = float(settings.cache_lease_s)
        self.max_bytes = int(settings.cache_store_max_bytes)

    # -- opening ---------------------------------------------------------------
    @classmethod
    def of(cls, settings: CacheSettings) -> FleetCache | None:
        """The cache ``settings.cache_url`` (else ``$STITCH_CACHE_URL``) names, one
        per URL and process; None when none is named or it is off (said once)."""
        url = settings.cache_url or os.environ.get(URL_ENV, "")
        if not url or settings.disable_cache:
            return None
        if url in cls._open:
            found = cls._open[url]
            if found is not None:
                found.settle(settings)
            return found
        found = None
        key = FleetKey.load()
        if isinstance(key, str):
            log.warning("stitch cache: the shared store %s is off: %s", url, key)
        else:
            try:
                found = cls(open_store(url), key, settings)
            except StoreDown as exc:
                log.warning("stitch cache: the shared store is off: %s", exc)
        cls._open[url] = found
        return found

    def went_down(self, exc: StoreDown) -> None:
        """The store did not answer: off for the rest of the process (one warning)."""
        if self.alive:
            self.alive = False
            log.warning(
                "stitch cache: the shared store did not answer (%s); compiling "
                "locally, nothing more is shared by this process",
                exc,
            )

    def _refuse(self, unit: Unit, stored: bytes, why: str) -> None:
        if self.refused.get(unit.name) != stored:
            self.refused[unit.name] = stored
            log.warning(
                "stitch cache: refusing shared entry %s from %s: %s; compiling it",
                unit.name,
                self.url,
                why,
            )

    # -- fetching --------------------------------------------------------------
    def fetch(self, root: str, unit: Unit) -> bool:
        """Install ``unit`` from the store into the cache at ``root``; whether
        it was there, verified and installed."""
        if not self.alive:
            return False
        start = time.perf_counter()
        try:
            stored = self.store.get_entry(unit.name)
            if stored is None or self.refused.get(unit.name) == stored:
                return False
            entry = self._verified(unit, stored)
            if entry is None:
                return False
            got = self._install(root, unit, entry, stored)
            if got:
                self.store.touch(unit.name, time.time())
        except StoreDown as exc:
            self.went_down(exc)
            return False
        if got:
            log.info(
                "stitch cache: installed %s from %s (%d files, %.1f MB) in %.2fs",
                unit.name,
                self.url,
                len(entry.files),
                entry.size / 1e6,
                time.perf_counter() - start,
            )
        return got

    def _verified(self, unit: Unit, stored: bytes) -> SharedEntry | None:
        try:
            entry = self.key.open(stored, f"{self.url} entry {unit.name}")
        except RecordError as exc:
            self._refuse(unit, stored, exc.detail)
            return None
        if entry.unit != unit.name:
            self._refuse(unit, stored, f"it names unit {entry.unit!r}")
            return None
        outside = [f.path for f in entry.files if not unit.allows(f.path)]
        if outside:
            self._refuse(unit, stored, f"file {outside[0]} is outside the unit")
            return None
        return entry

    def _install(
        self, root: str, unit: Unit, entry: SharedEntry, stored: bytes
    ) -> bool:
        try:
            check_trusted(root, root)
            for f in install_order(entry):
                dest = location.reference_entry(root, f.path)
                if file_hash_or_none(dest) == f.sha256:
                    continue
                data = self.store.get_blob(f.sha256)
                if data is None:
                    self._refuse(
                        unit, stored, f"blob {f.sha256[:12]} ({f.path}) is gone"
                    )
                    return False
                if len(data) != f.size or content_hash(data) != f.sha256:
                    # Content-addressed: a blob that is not its own hash is
                    # damage, removed so that the next publish stores it again.
                    self.store.delete_blob(f.sha256)
                    self._refuse(
                        unit, stored, f"blob of {f.path} does not match its sha256"
                    )
                    return False
                make_private_dirs(os.path.dirname(dest), root)
                atomic_write(dest, data)
        except (OSError, StitchError) as exc:
            if isinstance(exc, StoreDown):
                raise
            log.warning(
                "stitch cache: cannot install %s under %s (%s)", unit.name, root, exc
            )
            return False
        return True

    # -- publishing --------------------------------------------------------------
    def publish(self, root: str, unit: Unit) -> bool:
        """Store the unit's blobs, then its signed manifest (unless an entry with
        these files is there: one wins); whether the store holds it now."""
        if not self.alive:
            return False
        try:
            files = collect(root, unit)
        except (OSError, StitchError) as exc:
            log.warning("stitch cache: cannot publish %s (%s)", unit.name, exc)
            return False
        if not any(f.path.startswith(unit.folder + "/") for f, _ in files):
            return False  # nothing of the unit's own folder is on disk
        entry = SharedEntry(
            unit.name,
            tuple(f for f, _ in files),
            self.owner.rsplit(":", 1)[0],
            time.time(),
            location.stitch_version(),
            str(torch.__version__),
        )
        # After a refusal every blob is stored again: one of them may be the
        # damage (a blob is checked only when it is read).
        healing = unit.name in self.refused
        shas = [f.sha256 for f, _ in files]
        try:
            # Stamped before the upload (a publisher killed mid-upload leaves
            # orphans that age out) and again before the manifest, uploading
            # what eviction collected meanwhile: see NOTE: [the store's
            # eviction policy] in eviction.py.
            for again in (False, True):
                self.store.stamp_blobs(shas)
                present = self.store.has_blobs(shas)
                for (f, path), there in zip(files, present, strict=True):
                    if not there or (healing and not again):
                        if not self._put_blob(f.sha256, path, healing):
                            return False  # changed under us; the next publish has it
            done = self._commit(unit, entry)
            if done and self.max_bytes:
                evict(
                    self.store,
                    self.key,
                    max_bytes=self.max_bytes,
                    lease_s=self.lease_s,
                    keep=unit.name,
                )
        except OSError as exc:
            log.warning("stitch cache: cannot publish %s (%s)", unit.name, exc)
            return False
        except StoreDown as exc:
            self.went_down(exc)
            return False
        return done

    def _put_blob(self, sha: str, path: str, replace: bool) -> bool:
        with open(path, "rb") as fh:
            data = fh.read()
        if content_hash(data) != sha:
            return False
        self.store.put_blob(sha, data, replace=replace)
        return True

    def _commit(self, unit: Unit, entry: SharedEntry) -> bool:
        sealed = self.key.seal(entry)
        for _ in range(3):
            current = self.store.get_entry(unit.name)
            if current is not None:
                try:
                    old = self.key.open(current, unit.name)
                except RecordError:
                    old = None  # unsigned, foreign or damaged: replaced
                if old is not None and set(entry.files) <= set(old.files):
                    if all(self.store.has_blobs([f.sha256 for f in old.files])):
                        self.store.touch(unit.name, time.time())
                        return True
            if self.store.put_entry(unit.name, sealed, current):
                self.store.touch(unit.name, time.time())
                self.refused.pop(unit.name, None)
                log.info(
                    "stitch cache: published %s to %s (%d files, %.1f MB)",
                    unit.name,
                    self.url,
                    len(entry.files),
                    entry.size / 1e6,
                )
                return True
        return False

    # -- reading the store (stitch cache ls / verify) --------------------------------
    def entries(self) -> list[tuple[str, float, bytes | None]]:
        """Every entry's name, last use and stored bytes, least recently used first."""
        return [(n, t, self.store.get_entry(n)) for n, t in self.store.by_age()]
