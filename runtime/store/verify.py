"""Checking a cache entry on disk without running anything (``stitch inspect``).

The same records the backend and a saved forward's load read are checked here
(the index, artifact identities, extras, saved forwards' records), with
every problem listed instead of rebuilt: records that do not validate, hashes
that do not match, a changed stitching source, artifacts whose identity
disagrees with the index, extra files of an artifact (its prebuilt record and
kernels) that are missing, truncated or changed, files no record uses, and
permissions the backend would refuse to load from.
"""

from __future__ import annotations

import dataclasses
import os

from stitch.core.errors import StitchCacheError

from . import codec, location
from .artifacts import read_identity
from .codec import RecordError
from .digests import file_hash, file_hash_or_none
from .explain import read_factors
from .extras import inspect_extras
from .index import INDEX_FILE, LOCK_FILE, SOURCE_FILE, Index, parse_index
from .load_failures import read_failures
from .location import (
    ARTIFACT_FILE,
    ARTIFACTS_DIR,
    EXTRAS_FILE,
    FACTORS_FILE,
    IDENTITY_FILE,
    LOAD_FAILURES_FILE,
    PREBUILT_DIR,
    entry_key,
)
from .records import AOTRecord, Reference, SignaturesRecord
from .trust import trust_problem


@dataclasses.dataclass
class EntryReport:
    """One entry folder: its index (if it validated), problems and notes."""

    directory: str
    index: Index | None = None
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def problem(self, relative: str, what: str) -> None:
        self.problems.append(
            f"{os.path.join(self.directory, relative) if relative else self.directory}: {what}"
        )


def find_entries(path: str) -> list[str]:
    """Entry folders at or under ``path``: those with an index or artifacts."""
    found = []
    for directory, dirs, files in os.walk(path):
        dirs.sort()
        if INDEX_FILE in files or ARTIFACTS_DIR in dirs:
            found.append(directory)
            dirs.clear()  # an entry holds no other entry
    return found


def inspect_entry(directory: str) -> EntryReport:
    report = EntryReport(directory)
    try:
        _inspect(report)
    except Exception as exc:  # noqa: BLE001
        # a diagnosis must not crash on what it diagnoses
        report.problem("", f"could not be inspected ({type(exc).__name__}: {exc})")
    return report


def _inspect(report: EntryReport) -> None:
    directory = report.directory
    root = location.root_of_entry(directory)
    _check_permissions(report, root)
    index_path = location.index_file(directory)
    if not os.path.isfile(index_path):
        report.problem(
            INDEX_FILE, "is missing (a run was stopped before recording anything)"
        )
    else:
        try:
            with open(index_path, "rb") as f:
                read = parse_index(f.read(), None, index_path)
        except OSError as exc:
            report.problem(INDEX_FILE, f"cannot be read ({type(exc).__name__}: {exc})")
        else:
            report.index = read.index
            for problem in read.problems:
                report.problem(INDEX_FILE, problem)
    index = report.index
    if index is not None:
        folder = location.entry_folder_key(directory)
        if folder != entry_key(index.identity):
            report.problem(
                INDEX_FILE,
                f"its identity (graph_key {index.identity.graph_key[:12]}..., config_hash "
                f"{index.identity.config_hash[:12]}...) is not the one of folder {folder}",
            )
    used = {
        INDEX_FILE,
        LOCK_FILE,
        ARTIFACTS_DIR,
        PREBUILT_DIR,
        FACTORS_FILE,
        LOAD_FAILURES_FILE,
    }
    try:
        read_failures(directory)
    except StitchCacheError as exc:
        report.problem(LOAD_FAILURES_FILE, str(exc).replace(directory + os.sep, ""))
    if os.path.exists(location.factors_file(directory)):
        try:
            read_factors(directory)
        except (StitchCacheError, OSError) as exc:
            report.problem(FACTORS_FILE, str(exc).replace(directory + os.sep, ""))
    if index is not None and index.source is not None:
        used.add(SOURCE_FILE)
        _check_source(report, index.source.sha256)
    keys, extras = _check_pieces(report, index) if index is not None else (set(), set())
    _orphans(report, used, keys)
    _unlisted_extras(report, extras)


def _check_permissions(report: EntryReport, root: str) -> None:
    paths = [root, os.path.dirname(report.directory)]
    for directory, dirs, files in os.walk(report.directory):
        paths.append(directory)
        paths.extend(os.path.join(directory, f) for f in sorted(files))
        dirs.sort()
    for path in paths:
        problem = trust_problem(path, root)
        if problem is not None:
            report.problems.append(f"refused by the backend: {problem}")
            return


def _check_source(report: EntryReport, sha256: str) -> None:
    path = location.source_file(report.directory)
    if not os.path.isfile(path):
        report.problem(SOURCE_FILE, "is missing")
        return
    actual = file_hash(path)
    if actual != sha256:
        report.problem(
            SOURCE_FILE,
            f"sha256 {actual[:12]}... does not match the index "
            f"({sha256[:12]}...): the stitching source was changed",
        )


def _check_pieces(report: EntryReport, index: Index) -> tuple[set[str], set[str]]:
    """Check each recorded artifact (and its extra files); the keys and extra
    files the index uses."""
    keys: set[str] = set()
    extras: set[str] = set()
    for name, record in index.pieces.items():
        for entry in record.entries:
            if not entry.saved:
                report.notes.append(
                    f"{name} {entry.target}: not cached ({entry.note or 'not written'})"
                )
                continue
            keys.add(entry.key)
            relative = os.path.join(ARTIFACTS_DIR, entry.key)
            folder = location.artifact_folder(report.directory, entry.key)
            if not os.path.isdir(folder):
                what = "is not a folder" if os.path.lexists(folder) else "is missing"
                report.problem(relative, f"{what} (piece {name}, {entry.target})")
                continue
            try:
                identity = read_identity(folder)
            except RecordError as exc:
                report.problem(os.path.relpath(exc.path, report.directory), exc.detail)
                continue
            except OSError as exc:
                report.problem(
                    relative, f"cannot be read ({type(exc).__name__}: {exc})"
                )
                continue
            # The store's one identity check, without a graph (as a saved
            # forward makes it): what the index records is what is checked.
            problem = identity.mismatch(
                backend=index.identity.backend,
                config_hash=index.identity.config_hash,
                piece=None,
                target=entry.target,
                key=entry.key,
                size_index=record.size_index,
            )
            if problem is not None:
                report.problem(
                    os.path.join(relative, IDENTITY_FILE),
                    f"{problem} (the index's piece {name}, {entry.target})",
                )
            listed, problems = inspect_extras(folder, identity.sha256)
            extras |= listed
            for path, problem in problems:
                report.problem(os.path.relpath(path, report.directory), problem)
    return keys, extras


def _orphans(report: EntryReport, used: set[str], keys: set[str]) -> None:
    for name in sorted(os.listdir(report.directory)):
        if name not in used:
            report.problem(name, "is orphaned (no record uses it)")
    artifacts = location.artifacts_dir(report.directory)
    if not os.path.isdir(artifacts):
        return
    for name in sorted(os.listdir(artifacts)):
        relative = os.path.join(ARTIFACTS_DIR, name)
        if name not in keys:
            report.problem(relative, "is orphaned (no index entry uses it)")
            continue
        if not os.path.isdir(os.path.join(artifacts, name)):
            continue  # reported above as not a folder
        extra = sorted(
            set(os.listdir(os.path.join(artifacts, name)))
            - {ARTIFACT_FILE, IDENTITY_FILE, EXTRAS_FILE}
        )
        for file in extra:
            report.problem(
                os.path.join(relative, file), "is orphaned (no record uses it)"
            )


def _unlisted_extras(report: EntryReport, listed: set[str]) -> None:
    """Files under ``prebuilt/`` no artifact lists: never loaded, safe to delete
    (left by a replaced artifact or a run stopped while writing them)."""
    prebuilt = location.prebuilt_dir(report.directory)
    unlisted = []
    for directory, dirs, files in os.walk(prebuilt):
        dirs.sort()
        for file in sorted(files):
            relative = os.path.relpath(os.path.join(directory, file), report.directory)
            if relative.replace(os.sep, "/") not in listed:
                unlisted.append(relative)
    if unlisted:
        more = f" and {len(unlisted) - 1} more" if len(unlisted) > 1 else ""
        report.notes.append(
            f"{unlisted[0]}{more}: listed by no artifact, never loaded (safe to delete)"
        )


# -- saved forwards (``aot_compile``) ------------------------------------------------


def inspect_aot(folder: str) -> list[str]:
    """The problems of the saved forward's record in ``folder``
    (``<root>/aot/<model key>/rank_<r>/function.py``): a record that does not
    decode (naming the field), side files it names that are missing or changed,
    and permissions a load would refuse.  Whether it is stale is a load's to
    decide (it depends on the loading process)."""
    problems: list[str] = []
    root = location.root_of_aot(folder)
    path = location.aot_record_file(folder)
    for checked in (folder, path):
        problem = trust_problem(checked, root)
        if problem is not None:
            problems.append(f"refused by a load: {problem}")
            return problems
    try:
        record = codec.read(AOTRecord, path)
    except (RecordError, OSError) as exc:
        return [str(exc) if isinstance(exc, RecordError) else f"{path}: {exc}"]
    try:
        codec.decode(Reference, record.stitched, f"{path}: field stitched")
    except RecordError as exc:
        problems.append(str(exc))
    signatures = os.path.join(folder, location.AOT_SIGNATURES_FILE)
    if os.path.exists(signatures):
        try:
            codec.read(SignaturesRecord, signatures)
        except (RecordError, OSError) as exc:
            problems.append(str(exc))
    sides = [
        (location.AOT_BYTECODE_FILE, record.function.bytecode_sha256),
        (location.AOT_TORCH_FILE, record.torch_function_sha256),
    ]
    for name, sha256 in sides:
        if sha256 is None:
            continue
        side = location.aot_side_file(folder, name)
        actual = file_hash_or_none(side)
        if actual is None:
            problems.append(f"{side}: is missing (the record names it)")
        elif actual != sha256:
            problems.append(
                f"{side}: sha256 {actual[:12]}... does not match the record "
                f"({sha256[:12]}...)"
            )
    return problems
