"""A child process's result: the JSON on the last line it printed after a marker
(its other output, logs included, may come before or after it)."""

from __future__ import annotations

import json
from typing import Any


def marked_result(output: str, marker: str) -> dict[str, Any] | None:
    """The JSON after ``marker`` on the last line of ``output`` that starts with
    it; None when no line does."""
    for line in reversed(output.splitlines()):
        if line.startswith(marker):
            return json.loads(line[len(marker) :])
    return None
