"""``stitch inspect``'s job: every cache entry and saved forward under a folder,
read and checked, printed readably (``inspect_cache``)."""

from __future__ import annotations

import dataclasses
import os
from typing import TextIO

from ..saved.input_mismatch import CHECK_FILE, read_signatures
from ..store.index import INDEX_FILE, Index
from ..store.location import AOT_RECORD_FILE, find_aot_folders, root_of_aot
from ..store.verify import find_entries, inspect_aot, inspect_entry
from ..tables import markdown_table


def inspect_cache(path: str, out: TextIO) -> int:
    """Check and print the cache entries at or under ``path`` (a rank folder or above).

    Exit status: 0 when every entry is healthy, 1 when one is not, 2 when there
    is no entry.
    """
    entries = find_entries(path) if os.path.isdir(path) else []
    saved = find_aot_folders(path) if os.path.isdir(path) else []
    if not entries and not saved:
        print(f"stitch inspect: no {INDEX_FILE} under {path}", file=out)
        return 2
    unhealthy = 0
    for folder in saved:
        problems = inspect_aot(folder)
        print(f"{folder}\n  saved forward: {AOT_RECORD_FILE}", file=out)
        if not problems:
            _print_saved_edit(folder, out)
        unhealthy += _print_health(problems, out)
    for directory in entries:
        report = inspect_entry(directory)
        print(f"{directory}", file=out)
        if report.index is not None:
            _print_index(report.index, directory, out)
        for note in report.notes:
            print(f"  note: {note}", file=out)
        unhealthy += _print_health(report.problems, out)
    _print_input_checks(path, out)
    if unhealthy:
        print(
            f"stitch inspect: {unhealthy} of {len(entries) + len(saved)} entries "
            "unhealthy; a run "
            "rebuilds what it can check, or delete the entry folder",
            file=out,
        )
        return 1
    return 0


def _print_health(problems: list[str], out: TextIO) -> bool:
    """The health line, then a line per problem; whether there is any."""
    health = f"{len(problems)} problem(s)" if problems else "ok"
    print(f"  health: {health}", file=out)
    for problem in problems:
        print(f"    - {problem}", file=out)
    return bool(problems)


def _print_saved_edit(folder: str, out: TextIO) -> None:
    """Whether the entry a saved forward loads was written while an edited
    stitching file ran (NOTE: [an edited stitching file runs in place of the
    emitted one])."""
    from ..pipeline.api import reference_entry
    from ..store import codec
    from ..store.index import parse_index
    from ..store.location import aot_record_file, index_file
    from ..store.records import AOTRecord, Reference

    try:
        path = aot_record_file(folder)
        record = codec.read(AOTRecord, path)
        reference = codec.decode(Reference, record.stitched, path)
        entry = reference_entry(reference, root_of_aot(folder))
        with open(index_file(entry), "rb") as f:
            index = parse_index(f.read(), None, index_file(entry)).index
    except Exception:  # noqa: BLE001 - the health check above says what is wrong
        return
    if index is not None and index.edited is not None:
        print(
            f"  saved while an edited stitching source ran: {index.edited.path} "
            f"(sha256 {index.edited.sha256}); it loads the emitted source",
            file=out,
        )


def _print_input_checks(path: str, out: TextIO) -> None:
    """The input check of each saved forward (``aot_compile``) under ``path``, in full."""
    for directory, dirs, files in os.walk(path):
        dirs.sort()
        if CHECK_FILE not in files:
            continue
        check = os.path.join(directory, CHECK_FILE)
        try:
            record, code = read_signatures(directory)
            summary = (
                f"{len(record.signatures)} signature(s), "
                f"{len(record.rejected)} rejected"
            )
        except Exception as exc:  # noqa: BLE001 - a diagnosis must not crash
            print(f"{directory}\n  input check: {check} is unusable ({exc})", file=out)
            continue
        print(f"{directory}\n  input check: {check} ({summary})", file=out)
        for line in code.splitlines():
            print(f"    {line}" if line else "", file=out)


def _print_index(index: Index, directory: str, out: TextIO) -> None:
    identity = dataclasses.asdict(index.identity)
    for key in (
        "stitch_version",
        "torch_version",
        "backend",
        "config_hash",
        "graph_key",
        "group",
    ):
        value = identity[key]
        if key == "group" and not value:
            continue
        if len(value) > 24:
            value = value[:16] + "…"
        print(f"  {key}: {value}", file=out)
    if index.source is not None:
        print(
            f"  stitching source: {index.source.file} (sha256 "
            f"{index.source.sha256[:12]}…, dispatch on "
            f"{index.source.dispatch_on or 'each piece'})",
            file=out,
        )
    else:
        print("  stitching source: not recorded", file=out)
    if index.edited is not None:
        # NOTE: [an edited stitching file runs in place of the emitted one]
        print(
            f"  edited stitching source ran: {index.edited.path} (sha256 "
            f"{index.edited.sha256}); the entry keeps the emitted source",
            file=out,
        )
    print(f"  compiled pieces: {len(index.pieces)}", file=out)
    keys: set[str] = set()
    rows = []
    for name in sorted(index.pieces, key=lambda p: (len(p), p)):
        record = index.pieces[name]
        saved = [e.key for e in record.entries if e.saved]
        keys.update(saved)
        targets = ", ".join(e.target for e in record.entries)
        rows.append((name, record.module_path or "-", targets, len(saved)))
    if rows:
        table = markdown_table(("piece", "module", "targets", "artifacts"), rows)
        print("\n" + table + "\n", file=out)
    print(f"  unique artifacts: {len(keys)}", file=out)
