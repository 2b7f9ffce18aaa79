"""The persistent compile cache, as one compilation uses it (``CompileCache``).

Layout of one entry (``<root>/<entry key>/rank_<r>/``, every folder 0700; the
key covers the graph, or the group the ranks of one engine share: NOTE: [ranks
of one engine share a folder] in ``location.py``)::

    index.py                   # the typed index (index.py), a Python literal
    index.lock                 # serializes concurrent index updates
    execution_fn.py            # the emitted stitching source, exactly what runs
    artifacts/<key>/...        # one sealed folder per compiled piece (artifacts.py)

The backend asks this object for a piece's recorded plan, for a verified
artifact, to save and record a compiled piece, and to read or save the
stitching source.  Rules it keeps:

- nothing in the folder can crash a run: what does not validate is one warning
  naming the file and field, then rebuilt (:meth:`fault`);
- every compiled piece is recorded as soon as it is on disk (atomic, fsync'd),
  so a run killed at any point leaves what the next run needs;
- a location that cannot be written (read-only, a file, a full disk) is one
  warning; the run goes on in memory.  A warm run writes nothing;
- executable content is loaded only from folders this user alone can write
  (``trust.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import msgspec
import torch

from stitch.core.errors import StitchCacheError

from ..counter import compilation_counter
from ..settings import CacheSettings
from . import codec, location
from .artifacts import ArtifactIdentity, PieceIdentity
from .digests import content_hash, file_hash
from .files import atomic_write, locked, make_private_dirs
from .index import (
    INDEX_FILE,
    SOURCE_FILE,
    EditedRecord,
    EntryIdentity,
    Index,
    SourceRecord,
    parse_index,
)
from .location import CACHE_ENV, cache_root, current_rank, stitch_version
from .piece_store import PieceStore
from .trust import check_trusted

log = logging.getLogger("stitch")

__all__ = ["CACHE_ENV", "INDEX_FILE", "SOURCE_FILE", "CompileCache", "cache_root"]


class CompileCache(PieceStore):
    """One cache entry directory (already per rank) and what this run knows of it.

    Its pieces' artifacts (the recorded plan, lookup, save) are :class:`PieceStore`'s
    job (``piece_store.py``); this class owns the entry, its index and its source."""

    def __init__(self, root: str, directory: str, identity: EntryIdentity) -> None:
        self.root = root
        self.directory = directory
        self.identity = identity
        self.writable = True
        self.index: Index | None = None  # as read at the start of the run
        # (file stamp, index) last seen on disk
        self._disk: tuple[Any, Index] | None = None
        self._pieces: dict[str, PieceIdentity] = {}
        self._artifacts: dict[str, ArtifactIdentity | None] = {}  # verified, by key
        self._broken: set[str] = set()  # keys whose folder must be replaced
        self._reported: set[str] = set()
        # Quiet: faults are collected in ``faults`` instead of warned about (a
        # saved forward's load, whose caller reports its failure; NOTE: [a
        # broken entry is reported once, by the run that rebuilds it]).
        self.quiet = False
        self.faults: list[str] = []
        self._source_read = False
        self._source_saved = False

    @classmethod
    def open(
        cls,
        settings: CacheSettings,
        backend: str,
        graph_key: str,
        config_hash: str,
        group: str = "",
    ) -> CompileCache:
        """The entry for this graph and config (in ``group``'s folder when one is
        named); raises ``StitchCacheTrustError``."""
        root = cache_root(settings)
        identity = EntryIdentity(
            stitch_version(),
            str(torch.__version__),
            config_hash,
            graph_key,
            backend,
            group,
        )
        directory = location.entry_dir(root, identity, current_rank())
        cache = cls(root, directory, identity)
        check_trusted(directory, root)
        location.note_cache_root(root)
        cache.index = cache._read_index(report=True)
        return cache

    @classmethod
    def existing(cls, root: str, directory: str, quiet: bool = False) -> CompileCache:
        """An entry already on disk, taken as its index describes itself (a saved
        function's reference names the entry, not the graph); trust-checked.
        ``quiet``: collect faults instead of warning (see ``faults``)."""
        check_trusted(directory, root)
        path = location.index_file(directory)
        check_trusted(path, root)
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError as exc:
            raise StitchCacheError(f"{path} cannot be read ({exc})") from None
        read = parse_index(text, None, path)
        if read.index is None or read.problems:
            raise StitchCacheError(f"{path}: {'; '.join(read.problems)}")
        cache = cls(root, directory, read.index.identity)
        location.note_cache_root(root)
        cache.quiet = quiet
        cache.index = read.index
        return cache

    # -- problems -------------------------------------------------------------
    def fault(self, path: str, why: str, rebuilding: str = "that entry") -> None:
        """One warning per broken file and run; the caller rebuilds what it held."""
        if path in self._reported:
            return
        self._reported.add(path)
        if self.quiet:
            self.faults.append(f"{path}: {why}")
            return
        compilation_counter.num_cache_faults += 1
        log.warning("stitch cache: %s: %s; rebuilding %s", path, why, rebuilding)

    def stop_saving(self, why: str) -> None:
        """Save nothing more this run (one warning): what is compiled now could
        not be recorded correctly (``why``)."""
        if self.writable:
            self.writable = False
            log.warning(
                "stitch cache: %s; nothing more is cached in %s this run",
                why,
                self.directory,
            )

    def _unwritable(self, path: str, exc: OSError) -> None:
        if not self.writable:
            return
        self.writable = False
        # Name the file that failed, unless it is one of our temporary files.
        where = exc.filename if isinstance(exc.filename, str) else path
        if f"{os.sep}." in where.removeprefix(self.root):  # ".tmp-*", ".staging-*"
            where = path
        reason = exc.strerror or str(exc)
        log.warning(
            "stitch cache: cannot write %s (%s); compiling in memory, nothing more "
            "is cached this run",
            where,
            reason,
        )

    # -- the index ------------------------------------------------------------
    def _read_index(self, *, report: bool) -> Index | None:
        path = location.index_file(self.directory)
        try:
            check_trusted(path, self.root)
            with open(path, "rb") as f:
                stamp = os.fstat(f.fileno())
                text = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if report:
                self.fault(
                    path, f"cannot be read ({type(exc).__name__}: {exc})", "the index"
                )
            return None
        read = parse_index(text, self.identity, path)
        if read.problems and report:
            more = (
                f" (and {len(read.problems) - 1} more)"
                if len(read.problems) > 1
                else ""
            )
            what = "the index" if read.index is None else "those records"
            self.fault(path, read.problems[0] + more, what)
        if read.index is not None:
            self._disk = ((stamp.st_ino, stamp.st_mtime_ns, stamp.st_size), read.index)
        return read.index

    def _on_disk(self) -> Index:
        """The index as it is on disk now (re-read only if the file changed)."""
        try:
            st = os.stat(location.index_file(self.directory))
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if self._disk is not None and self._disk[0] == stamp:
            return self._disk[1]
        return self._read_index(report=False) or Index(self.identity, None, {})

    def _update(self, change: Callable[[Index], Index]) -> None:
        """Read, change and write the index under the entry's lock (several processes)."""
        if not self.writable:
            return
        path = location.index_file(self.directory)
        try:
            make_private_dirs(self.directory, self.root)
            with locked(location.lock_file(self.directory)):
                current = self._on_disk()
                new = change(current)
                if new == current:
                    return
                atomic_write(path, codec.encode(new))
                st = os.stat(path)
                self._disk = ((st.st_ino, st.st_mtime_ns, st.st_size), new)
        except OSError as exc:
            self._unwritable(path, exc)

    # -- the stitching source ---------------------------------------------------
    def holds_source(self) -> bool:
        """Whether the entry on disk holds the source this run uses (read or saved)."""
        return self._source_read or self._source_saved

    def source_path(self) -> str | None:
        """The file holding exactly the stitching source this run uses, if there is one
        (for tracebacks that read the source from disk)."""
        return location.source_file(self.directory) if self.holds_source() else None

    def has_source(self) -> bool:
        return self.index is not None and self.index.source is not None

    def read_source(
        self, submod_names: list[str], dispatch_on: str | None
    ) -> str | None:
        """The cached stitching source, if it is exactly what the index recorded."""
        record = self.index.source if self.index is not None else None
        if record is None:
            return None
        path = location.source_file(self.directory)
        for name, recorded, actual in (
            ("submod_names", list(record.submod_names), submod_names),
            ("dispatch_on", record.dispatch_on, dispatch_on),
        ):
            if recorded != actual:
                self.fault(
                    location.index_file(self.directory),
                    f"field source.{name} is {recorded!r}, this graph's is {actual!r}",
                    "the source",
                )
                return None
        check_trusted(path, self.root)
        try:
            with open(path, "rb") as f:
                data = f.read()
            code = data.decode("utf-8")
        except FileNotFoundError:
            self.fault(path, "is missing")
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.fault(path, f"cannot be read ({type(exc).__name__}: {exc})")
            return None
        # Hash what was read (not the file again): what runs is what was checked.
        actual = content_hash(data)
        if actual != record.sha256:
            self.fault(
                path,
                f"sha256 {actual[:12]}... does not match the index ({record.sha256[:12]}...)",
            )
            return None
        self._source_read = True
        return code

    def note_edited(self, path: str) -> None:
        """Record that the edited stitching file ``path`` ran while this entry
        was written (``stitch inspect`` says so, with its sha256); nothing for
        ``""``.  The entry's own source stays the emitted one, and an entry read
        warm is not rewritten: a saved forward refuses an entry whose index
        changed since it was saved."""
        if not path or not self.writable or self._source_read:
            return
        path = os.path.abspath(os.path.expanduser(path))
        edited = EditedRecord(path, file_hash(path))
        self._update(lambda index: msgspec.structs.replace(index, edited=edited))

    def save_source(
        self, code: str, submod_names: list[str], dispatch_on: str | None
    ) -> None:
        """Write the stitching source and its index record (nothing if it was read)."""
        if self._source_read or not self.writable:
            return
        data = code.encode("utf-8")
        record = SourceRecord(
            SOURCE_FILE, content_hash(data), tuple(submod_names), dispatch_on
        )
        path = location.source_file(self.directory)
        try:
            make_private_dirs(self.directory, self.root)
            if not (os.path.isfile(path) and file_hash(path) == record.sha256):
                atomic_write(path, data)
        except OSError as exc:
            self._unwritable(path, exc)
            return
        self._update(lambda index: msgspec.structs.replace(index, source=record))
        self._source_saved = self.writable
