"""A child process's result: the JSON on the last line it printed after a marker
(its other output, logs included, may come before or after it)."""

from __future__ import annotations

import json
import sys
from typing import Any


def marked_result(output: str, marker: str) -> dict[str, Any] | None:
    """The JSON after ``marker`` on the last line of ``output`` that starts with
    it; None when no line does."""
    for line in reversed(output.splitlines()):
        if line.startswith(marker):
            return json.loads(line[len(marker) :])
    return None


def print_marked(marker: str, result: Any) -> None:
    """Print ``result`` as JSON after ``marker``, the line and its newline in one
    write.

    NOTE: [a marked line in one write]
    Our machines set PYTHONUNBUFFERED=1, and unbuffered, ``print`` writes its
    text and its end separately.  A child's logs share its output file, and a
    thread still at work (a tiered start publishing its entry, vLLM's engine)
    can log between the two: CI once read ``{...}stitch INFO stitch cache:
    published ...`` on a fleet replica's result line, which no JSON parser
    takes.  One write puts the whole line down at once."""
    sys.stdout.write(f"{marker}{json.dumps(result)}\n")
    sys.stdout.flush()
