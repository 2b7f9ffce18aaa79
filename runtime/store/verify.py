"""Checking a cache entry on disk without running anything (``stitch inspect``).

The same schema and identity records the backend reads are checked here, with
every problem listed instead of rebuilt: records that do not validate, hashes
that do not match, a changed stitching source, artifacts whose identity
disagrees with the index, extra files of an artifact (its prebuilt record and
kernels) that are missing, truncated or changed, files no record uses, and
permissions the backend would refuse to load from.
"""

from __future__ import annotations

import dataclasses
import os

from .artifacts import (
    ARTIFACT_FILE,
    ARTIFACTS_DIR,
    IDENTITY_FILE,
    PREBUILT_DIR,
    read_identity,
)
from .extras import EXTRAS_FILE, inspect_extras
from .files import sha256_file
from .index import INDEX_FILE, LOCK_FILE, SOURCE_FILE, Index, Invalid, parse_index
from .location import entry_key
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
    except (
        Exception
    ) as exc:  # noqa: BLE001 - a diagnosis must not crash on what it diagnoses
        report.problem("", f"could not be inspected ({type(exc).__name__}: {exc})")
    return report


def _inspect(report: EntryReport) -> None:
    directory = report.directory
    root = os.path.dirname(os.path.dirname(directory))
    _check_permissions(report, root)
    index_path = os.path.join(directory, INDEX_FILE)
    if not os.path.isfile(index_path):
        report.problem(
            INDEX_FILE, "is missing (a run was stopped before recording anything)"
        )
    else:
        try:
            with open(index_path, encoding="utf-8") as f:
                read = parse_index(f.read(), None)
        except (OSError, UnicodeDecodeError) as exc:
            report.problem(INDEX_FILE, f"cannot be read ({type(exc).__name__}: {exc})")
        else:
            report.index = read.index
            for problem in read.problems:
                report.problem(INDEX_FILE, problem)
    index = report.index
    if index is not None:
        folder = os.path.basename(os.path.dirname(os.path.abspath(directory)))
        if folder != entry_key(index.identity):
            report.problem(
                INDEX_FILE,
                f"its identity (graph_key {index.identity.graph_key[:12]}..., config_hash "
                f"{index.identity.config_hash[:12]}...) is not the one of folder {folder}",
            )
    used = {INDEX_FILE, LOCK_FILE, ARTIFACTS_DIR, PREBUILT_DIR}
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
    path = os.path.join(report.directory, SOURCE_FILE)
    if not os.path.isfile(path):
        report.problem(SOURCE_FILE, "is missing")
        return
    actual = sha256_file(path)
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
            folder = os.path.join(report.directory, relative)
            if not os.path.isdir(folder):
                what = "is not a folder" if os.path.lexists(folder) else "is missing"
                report.problem(relative, f"{what} (piece {name}, {entry.target})")
                continue
            try:
                identity = read_identity(folder)
            except Invalid as exc:
                file = ARTIFACT_FILE if exc.field == "sha256" else IDENTITY_FILE
                report.problem(os.path.join(relative, file), str(exc))
                continue
            except (OSError, UnicodeDecodeError) as exc:
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
    artifacts = os.path.join(report.directory, ARTIFACTS_DIR)
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
    prebuilt = os.path.join(report.directory, PREBUILT_DIR)
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
