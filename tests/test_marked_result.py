"""A child's marked result line survives logs written beside it (NOTE: [a
marked line in one write] in runtime/harness/marked_result.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stitch.runtime.harness.marked_result import marked_result, print_marked

MARK = "stitch-test-result: "


class Writes(io.StringIO):
    """A stdout that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_the_line_and_its_newline_are_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = Writes()
    monkeypatch.setattr(sys, "stdout", out)
    print_marked(MARK, {"swapped": 3, "tokens": [1, 2]})
    assert out.writes == [MARK + '{"swapped": 3, "tokens": [1, 2]}\n']
    assert marked_result(out.getvalue(), MARK) == {"swapped": 3, "tokens": [1, 2]}


CHILD = """
import logging, sys, threading
from stitch.runtime.harness.marked_result import print_marked

sys.setswitchinterval(1e-6)  # threads take turns often: the race shows
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
log = logging.getLogger("stitch")
done = threading.Event()

def chatter():
    while not done.is_set():
        log.info("stitch cache: published an entry")

thread = threading.Thread(target=chatter, daemon=True)
thread.start()
try:
    for i in range(3000):
        print_marked(sys.argv[1], {"i": i, "pad": "x" * 200})
finally:
    done.set()
    thread.join()
"""


def test_a_child_logging_from_a_thread_keeps_every_result_line_whole(
    tmp_path: Path,
) -> None:
    # As a fleet replica runs: unbuffered, its logs and its result in one file.
    log = tmp_path / "child.log"
    with log.open("wb") as out:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, MARK],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            timeout=60,
        )
    assert proc.returncode == 0, log.read_text()[-2000:]
    lines = [ln for ln in log.read_text().splitlines() if MARK in ln]
    assert len(lines) == 3000
    bad = [ln for ln in lines if not ln.startswith(MARK) or not ln.endswith("}")]
    assert bad == [], bad[:3]
