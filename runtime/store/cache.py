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

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from stitch.core.errors import StitchCacheError

from ..config import CompilationConfig
from ..counter import compilation_counter
from ..targets import Target, targets_by_key
from .artifacts import (
    ARTIFACT_FILE,
    ARTIFACTS_DIR,
    IDENTITY_FILE,
    ArtifactIdentity,
    PieceIdentity,
    publish,
    read_identity,
)
from .files import (
    atomic_write,
    locked,
    make_private_dirs,
    sha256_bytes,
    sha256_file,
)
from .index import (
    INDEX_FILE,
    LOCK_FILE,
    SOURCE_FILE,
    EntryIdentity,
    EntryRecord,
    Index,
    Invalid,
    PieceRecord,
    SourceRecord,
    parse_index,
)
from .location import CACHE_ENV, cache_root, current_rank, entry_key, stitch_version
from .trust import check_trusted

log = logging.getLogger("stitch")

__all__ = ["CACHE_ENV", "INDEX_FILE", "SOURCE_FILE", "CompileCache", "cache_root"]


class CompileCache:
    """One cache entry directory (already per rank) and what this run knows of it."""

    def __init__(self, root: str, directory: str, identity: EntryIdentity) -> None:
        self.root = root
        self.directory = directory
        self.identity = identity
        self.writable = True
        self.index: Index | None = None  # as read at the start of the run
        self._disk: tuple[Any, Index] | None = (
            None  # (file stamp, index) last seen on disk
        )
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
        config: CompilationConfig,
        graph_key: str,
        config_hash: str,
        group: str = "",
    ) -> CompileCache:
        """The entry for this graph and config (in ``group``'s folder when one is
        named); raises ``StitchCacheTrustError``."""
        root = cache_root(config)
        identity = EntryIdentity(
            stitch_version(),
            torch.__version__,
            config_hash,
            graph_key,
            config.backend,
            group,
        )
        directory = os.path.join(root, entry_key(identity), f"rank_{current_rank()}")
        cache = cls(root, directory, identity)
        check_trusted(directory, root)
        cache.index = cache._read_index(report=True)
        return cache

    @classmethod
    def existing(cls, root: str, directory: str, quiet: bool = False) -> CompileCache:
        """An entry already on disk, taken as its index describes itself (a saved
        function's reference names the entry, not the graph); trust-checked.
        ``quiet``: collect faults instead of warning (see ``faults``)."""
        check_trusted(directory, root)
        path = os.path.join(directory, INDEX_FILE)
        check_trusted(path, root)
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StitchCacheError(f"{path} cannot be read ({exc})") from None
        read = parse_index(text, None)
        if read.index is None or read.problems:
            raise StitchCacheError(f"{path}: {'; '.join(read.problems)}")
        cache = cls(root, directory, read.index.identity)
        cache.quiet = quiet
        cache.index = read.index
        return cache

    def path(self, relative: str) -> str:
        return os.path.join(self.directory, relative)

    def artifact_path(self, key: str, *name: str) -> str:
        return os.path.join(self.directory, ARTIFACTS_DIR, key, *name)

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
        path = self.path(INDEX_FILE)
        try:
            check_trusted(path, self.root)
            with open(path, "rb") as f:
                stamp = os.fstat(f.fileno())
                text = f.read().decode("utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError) as exc:
            if report:
                self.fault(
                    path, f"cannot be read ({type(exc).__name__}: {exc})", "the index"
                )
            return None
        read = parse_index(text, self.identity)
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
            st = os.stat(self.path(INDEX_FILE))
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
        path = self.path(INDEX_FILE)
        try:
            make_private_dirs(self.directory, self.root)
            with self._locked():
                current = self._on_disk()
                new = change(current)
                if new == current:
                    return
                atomic_write(path, new.render().encode("utf-8"))
                st = os.stat(path)
                self._disk = ((st.st_ino, st.st_mtime_ns, st.st_size), new)
        except OSError as exc:
            self._unwritable(path, exc)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return locked(self.path(LOCK_FILE))

    # -- pieces -----------------------------------------------------------------
    def _piece(self, name: str, graph: fx.GraphModule) -> PieceIdentity:
        if name not in self._pieces:
            self._pieces[name] = PieceIdentity.of(graph)
        return self._pieces[name]

    def identify(self, pieces: dict[str, fx.GraphModule]) -> None:
        """Take each piece's identity now, before a compile can specialize the
        sizes its placeholders describe (see compat/shapes.py)."""
        for name, graph in pieces.items():
            self._piece(name, graph)

    def _old_entry(self, name: str, target: str) -> EntryRecord | None:
        record = self.index.pieces.get(name) if self.index is not None else None
        return record.entry(target) if record is not None else None

    def recorded_plan(
        self, name: str, graph: fx.GraphModule, config: CompilationConfig
    ) -> tuple[int | None, list[Target], list[str]] | None:
        """Size argument, targets and keys the index records for a piece, if all load.

        NOTE: [a recorded plan is checked against its artifacts]
        A plan read from the index skips fake propagation, so nothing else would
        catch an edited record: each entry's artifact must exist, and its identity
        must say it was compiled for this piece, target and size argument.
        """
        record = self.index.pieces.get(name) if self.index is not None else None
        if record is None:
            return None
        possible = targets_by_key(config, record.size_index is not None)
        where = f"pieces[{name!r}]"
        targets: list[Target] = []
        for i, entry in enumerate(record.entries):
            if entry.target not in possible:
                self.fault(
                    self.path(INDEX_FILE),
                    f"field {where}.entries[{i}].target is {entry.target!r}, not a target "
                    "of this config",
                    "that record",
                )
                return None
            if not entry.saved:
                return None  # compiled again anyway, which needs fake propagation
            identity = self._artifact(entry.key, claimed=True)
            if identity is None:
                return None
            problem = self._mismatch(
                identity, name, graph, entry.target, entry.key, record.size_index
            )
            if problem is not None:
                bad = (
                    f"{where}.size_index is {record.size_index!r}"
                    if problem.startswith("field size_index")
                    else f"{where}.entries[{i}].key points at {self.artifact_path(entry.key)}"
                )
                self.fault(
                    self.path(INDEX_FILE),
                    f"field {bad}, but that artifact's identity disagrees ({problem})",
                    "that record",
                )
                return None
            targets.append(possible[entry.target])
        if Target("general") not in targets:
            return None
        return record.size_index, targets, [e.key for e in record.entries]

    def _mismatch(
        self,
        identity: ArtifactIdentity,
        name: str,
        graph: fx.GraphModule | None,
        target: str,
        key: str,
        size_index: int | None,
    ) -> str | None:
        """What in ``identity`` disagrees with this entry's use of the artifact."""
        return identity.mismatch(
            backend=self.identity.backend,
            config_hash=self.identity.config_hash,
            piece=self._piece(name, graph) if graph is not None else None,
            target=target,
            key=key,
            size_index=size_index,
        )

    def _artifact(self, key: str, *, claimed: bool) -> ArtifactIdentity | None:
        """The verified identity of the artifact for ``key``, or None (reported once)."""
        if key in self._artifacts:
            return self._artifacts[key]
        folder = self.artifact_path(key)
        identity = None
        if not os.path.isdir(folder):
            if os.path.lexists(folder):
                self.fault(folder, "is not a folder")
                self._broken.add(key)
            elif claimed:
                self.fault(folder, "is missing")
        else:
            for name in (IDENTITY_FILE, ARTIFACT_FILE):
                check_trusted(os.path.join(folder, name), self.root)
            try:
                identity = read_identity(folder)
                if identity.key != key:
                    raise Invalid(
                        "key", f"is {identity.key!r}, but the folder is {key!r}"
                    )
            except Invalid as exc:
                file = ARTIFACT_FILE if exc.field == "sha256" else IDENTITY_FILE
                self.fault(os.path.join(folder, file), str(exc))
                self._broken.add(key)
                identity = None
            except (OSError, UnicodeDecodeError) as exc:
                self.fault(folder, f"cannot be read ({type(exc).__name__}: {exc})")
                self._broken.add(key)
                identity = None
        self._artifacts[key] = identity
        return identity

    def has_artifact(self, key: str) -> bool:
        """Whether a whole, verified artifact is stored under ``key``."""
        return self._artifact(key, claimed=False) is not None

    def lookup(
        self,
        name: str,
        graph: fx.GraphModule | None,
        target: Target,
        key: str,
        size_index: int | None,
    ) -> tuple[str, bool, str] | None:
        """``(artifact path, unwrap, sha256)`` of a verified artifact for this use, or None.

        The one identity check of a warm start and a saved forward; a saved
        forward has no ``graph`` (see :meth:`ArtifactIdentity.mismatch`)."""
        old = self._old_entry(name, target.key())
        claimed = old is not None and old.saved and old.key == key
        identity = self._artifact(key, claimed=claimed)
        if identity is None:
            return None
        problem = self._mismatch(identity, name, graph, target.key(), key, size_index)
        if problem is not None:
            self.fault(
                self.artifact_path(key, IDENTITY_FILE), f"{problem} (piece {name})"
            )
            self._broken.add(key)
            return None
        return self.artifact_path(key, ARTIFACT_FILE), identity.unwrap, identity.sha256

    def load_failed(self, key: str, path: str, exc: Exception) -> None:
        self.fault(path, str(exc))
        self._broken.add(key)

    def save_artifact(
        self,
        name: str,
        graph: fx.GraphModule,
        target: Target,
        key: str,
        size_index: int | None,
        *,
        unwrap: bool,
        strings: tuple[str, ...] | None,
        save: Callable[[str], None],
    ) -> EntryRecord:
        """Save a compiled piece (``save(path)`` writes it); its index entry."""
        old = self._old_entry(name, target.key())
        if old is not None and not old.saved and old.key == key and old.note:
            log.info(
                "stitch cache: piece %s (%s) stays in memory: %s",
                name,
                target.describe(),
                old.note,
            )
            return old
        if not self.writable:
            return EntryRecord(target.key(), key, False, "")
        artifacts_dir = self.path(ARTIFACTS_DIR)

        def identity_for(sha256: str) -> ArtifactIdentity:
            return ArtifactIdentity(
                backend=self.identity.backend,
                config_hash=self.identity.config_hash,
                piece_hash=self._piece(name, graph).piece_hash,
                strings=strings,
                target=target.key(),
                key=key,
                size_index=size_index,
                unwrap=unwrap,
                sha256=sha256,
            )

        try:
            make_private_dirs(artifacts_dir, self.root)
            identity = publish(
                artifacts_dir, key, save, identity_for, replace=key in self._broken
            )
        except StitchCacheError as exc:
            if isinstance(exc.__cause__, OSError):
                self._unwritable(artifacts_dir, exc.__cause__)
                return EntryRecord(target.key(), key, False, "")
            # NOTE: [an artifact that cannot be saved is recorded as such]
            # The compiler could not serialize it (not the disk): every run will
            # compile it again, so the index says so once, instead of a broken
            # file record that every later run would warn about.
            note = f"the compiler could not save it ({exc})"
            log.warning(
                "stitch cache: piece %s (%s) cannot be cached: %s; it is compiled on "
                "every run",
                name,
                target.describe(),
                exc,
            )
            return EntryRecord(target.key(), key, False, note)
        except OSError as exc:
            self._unwritable(artifacts_dir, exc)
            return EntryRecord(target.key(), key, False, "")
        self._broken.discard(key)
        if identity is None:  # another process published it first
            self._artifacts.pop(key, None)
            identity = self._artifact(key, claimed=True)
        else:
            self._artifacts[key] = identity
        return EntryRecord(target.key(), key, identity is not None, "")

    def record_piece(self, name: str, record: PieceRecord) -> None:
        """Record a compiled piece in the index now (a crash later keeps it)."""
        if self.index is not None and self.index.pieces.get(name) == record:
            return
        self._update(lambda index: index.with_piece(name, record))

    def record_guards(self, guards: Sequence[str]) -> None:
        """Add guards the compile added to the ShapeEnv (see NOTE: [the guards a
        backend call adds are part of its cache entry] in compat/shapes.py)."""

        def change(index: Index) -> Index:
            new = tuple(g for g in guards if g not in index.guards)
            return dataclasses.replace(index, guards=index.guards + new)

        self._update(change)

    # -- the stitching source ---------------------------------------------------
    def holds_source(self) -> bool:
        """Whether the entry on disk holds the source this run uses (read or saved)."""
        return self._source_read or self._source_saved

    def source_path(self) -> str | None:
        """The file holding exactly the stitching source this run uses, if there is one
        (for tracebacks that read the source from disk)."""
        return self.path(SOURCE_FILE) if self.holds_source() else None

    def has_source(self) -> bool:
        return self.index is not None and self.index.source is not None

    def read_source(
        self, submod_names: list[str], dispatch_on: str | None
    ) -> str | None:
        """The cached stitching source, if it is exactly what the index recorded."""
        record = self.index.source if self.index is not None else None
        if record is None:
            return None
        path = self.path(SOURCE_FILE)
        for name, recorded, actual in (
            ("submod_names", list(record.submod_names), submod_names),
            ("dispatch_on", record.dispatch_on, dispatch_on),
        ):
            if recorded != actual:
                self.fault(
                    self.path(INDEX_FILE),
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
        actual = sha256_bytes(data)
        if actual != record.sha256:
            self.fault(
                path,
                f"sha256 {actual[:12]}... does not match the index ({record.sha256[:12]}...)",
            )
            return None
        self._source_read = True
        return code

    def save_source(
        self, code: str, submod_names: list[str], dispatch_on: str | None
    ) -> None:
        """Write the stitching source and its index record (nothing if it was read)."""
        if self._source_read or not self.writable:
            return
        data = code.encode("utf-8")
        record = SourceRecord(
            SOURCE_FILE, sha256_bytes(data), tuple(submod_names), dispatch_on
        )
        path = self.path(SOURCE_FILE)
        try:
            make_private_dirs(self.directory, self.root)
            if not (os.path.isfile(path) and sha256_file(path) == record.sha256):
                atomic_write(path, data)
        except OSError as exc:
            self._unwritable(path, exc)
            return
        self._update(lambda index: dataclasses.replace(index, source=record))
        self._source_saved = self.writable
