"""A cache entry's compiled pieces: the plan its index records, looking up, loading and saving artifacts.

:class:`PieceStore` is the half of :class:`~.cache.CompileCache` that deals
with one piece at a time (``artifacts/<key>/``, checked against its identity
record); the entry, its index and its stitching source are ``cache.py``'s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import msgspec
import torch.fx as fx

from stitch.core.errors import StitchCacheError

from ..settings import CompileSettings
from ..targets import Target, targets_by_key
from . import location
from .artifacts import ArtifactIdentity, PieceIdentity, publish, read_identity
from .codec import RecordError
from .files import make_private_dirs
from .index import EntryIdentity, EntryRecord, Index, PieceRecord
from .trust import check_trusted

log = logging.getLogger("stitch")


class PieceStore:
    """The pieces of one cache entry; :class:`~.cache.CompileCache` sets the
    state below and provides ``fault``, ``_unwritable`` and ``_update``."""

    root: str
    directory: str
    identity: EntryIdentity
    writable: bool
    index: Index | None
    _pieces: dict[str, PieceIdentity]
    _artifacts: dict[str, ArtifactIdentity | None]
    _broken: set[str]

    def fault(self, path: str, why: str, rebuilding: str = "that entry") -> None:
        raise NotImplementedError

    def _unwritable(self, path: str, exc: OSError) -> None:
        raise NotImplementedError

    def _update(self, change: Callable[[Index], Index]) -> None:
        raise NotImplementedError

    def artifact_path(self, key: str, *name: str) -> str:
        return os.path.join(location.artifact_folder(self.directory, key), *name)

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
        self, name: str, graph: fx.GraphModule, settings: CompileSettings
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
        possible = targets_by_key(settings, record.size_index is not None)
        where = f"pieces[{name!r}]"
        targets: list[Target] = []
        for i, entry in enumerate(record.entries):
            if entry.target not in possible:
                self.fault(
                    location.index_file(self.directory),
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
                    else f"{where}.entries[{i}].key points at {location.artifact_folder(self.directory, entry.key)}"
                )
                self.fault(
                    location.index_file(self.directory),
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
        folder = location.artifact_folder(self.directory, key)
        identity = None
        if not os.path.isdir(folder):
            if os.path.lexists(folder):
                self.fault(folder, "is not a folder")
                self._broken.add(key)
            elif claimed:
                self.fault(folder, "is missing")
        else:
            for path in (
                location.identity_file(folder),
                location.artifact_file(folder),
            ):
                check_trusted(path, self.root)
            try:
                identity = read_identity(folder)
            except RecordError as exc:
                self.fault(exc.path, exc.detail)
                self._broken.add(key)
            except OSError as exc:
                self.fault(folder, f"cannot be read ({type(exc).__name__}: {exc})")
                self._broken.add(key)
        self._artifacts[key] = identity
        return identity

    def look_again(self, key: str) -> None:
        """Forget what this run found under ``key``: another process (a compile
        worker) has saved it since."""
        if self._artifacts.get(key, True) is None:
            del self._artifacts[key]

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
        folder = location.artifact_folder(self.directory, key)
        if problem is not None:
            self.fault(location.identity_file(folder), f"{problem} (piece {name})")
            self._broken.add(key)
            return None
        return location.artifact_file(folder), identity.unwrap, identity.sha256

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
        artifacts_dir = location.artifacts_dir(self.directory)

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

    def refusal(self, key: str) -> str | None:
        """Why the compiled form of ``key`` is not run (an earlier run found its
        numbers differ from the uncompiled piece's), or None."""
        return self.index.refused.get(key) if self.index is not None else None

    def refuse(self, key: str, why: str) -> None:
        """Record that the compiled form of ``key`` is not run, and why.

        NOTE: [a piece that compiled wrong]
        A tiered start runs each landed piece beside its uncompiled piece on
        the inputs of the call that swaps it in (pipeline/tiered/tier.py);
        where the outputs differ beyond ``SWAP_TOLERANCE`` the compiled form is
        never run.  Its compile keys are recorded here, in the entry's index
        (``Index.refused``, with why), so that no later start, warm or cold,
        runs or compiles that piece again: it serves uncompiled, and each start
        says so once, naming the folder to delete to compile it again
        (pipeline/artifact_source.py).  The numbers stay right; that piece's
        speed is what is lost.
        """

        def change(index: Index) -> Index:
            return msgspec.structs.replace(index, refused={**index.refused, key: why})

        self._update(change)
        if self.index is not None:
            self.index = change(self.index)

    def record_guards(self, guards: Sequence[str]) -> None:
        """Add guards the compile added to the ShapeEnv (see NOTE: [the guards a
        backend call adds are part of its cache entry] in compat/shapes.py)."""

        def change(index: Index) -> Index:
            new = tuple(g for g in guards if g not in index.guards)
            return msgspec.structs.replace(index, guards=index.guards + new)

        self._update(change)
