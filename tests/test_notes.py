"""Every ``NOTE: [name]`` a reader is sent to exists.

A NOTE is written once, where its code is: a line that starts with
``NOTE: [name]`` (after ``#`` or a docstring's quotes) and ends there, or
goes on with ``: `` or a sentence.  Everywhere else, in the package, the
tests, the benchmarks, CI's scripts and the pages, ``NOTE: [name]`` points to
it (STYLE.md).  A pointer whose NOTE was renamed or removed sends the reader
nowhere: four did (one cut short to fit a line, two to a NOTE the suite had
dropped when it began to run the defaults, one that was never written).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The performance pages record each measurement as it was on its day, the
# NOTEs of that day among it.
RECORDS = {"docs/performance.md", "docs/performance_history.md"}
FOLDERS = ("core", "codegen", "runtime", "templates", "tests", "bench", "scripts")

DEFINED = re.compile(
    r'^[ \t]*(?:#[ \t]*|r?""")?NOTE: \[([^\]]+)\](?:[ \t]*$|: |[ \t]+[A-Z`])', re.M
)
POINTER = re.compile(r"NOTE:\s+\[([^\]]+)\]")


def _texts() -> dict[str, str]:
    paths = [ROOT / "README.md", ROOT / "pyproject.toml"]
    paths += sorted((ROOT / "docs").rglob("*.md")) + sorted((ROOT / ".ci").iterdir())
    for folder in FOLDERS:
        paths += sorted(
            p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".j2", ".sh")
        )
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in paths if p.is_file()}


def test_every_note_pointed_to_is_written() -> None:
    texts = _texts()
    written = {m.group(1) for text in texts.values() for m in DEFINED.finditer(text)}
    assert len(written) > 200, "the NOTEs were not found: has their form changed?"
    nowhere = set()
    for name, text in texts.items():
        if name in RECORDS or name == "tests/test_notes.py":  # its own examples
            continue
        # A pointer may run over a line break, and a comment's "#" with it.
        flat = re.sub(r"\n[ \t]*(?:#[ \t]*)?", " ", text)
        for match in POINTER.finditer(flat):
            note = " ".join(match.group(1).split())
            if note not in written:
                nowhere.add(f"{name}: NOTE: [{note}]")
    assert not nowhere, "pointers to no NOTE:\n" + "\n".join(sorted(nowhere))
