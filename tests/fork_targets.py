"""What tests/test_fork_server.py has a fork server run (imported by name in
the server, from $PYTHONPATH)."""

from __future__ import annotations

import json
import os
import sys
import time

PREPARED: list[str] = []


def prepare(args: list[str]) -> int:
    """The server's preparation: remembered, so a worker shows it inherited it."""
    PREPARED.extend(args)
    return 0


def fail(args: list[str]) -> int:
    raise RuntimeError(f"preparation refused {args}")


def report(argv: list[str]) -> int:
    """Write what this worker sees to the descriptor ``argv[0]``; exit ``argv[1]``."""
    line = sys.stdin.readline()
    with os.fdopen(int(argv[0]), "w") as out:
        seen = {
            "prepared": PREPARED,
            "env": os.environ.get("FORK_TARGET_VALUE"),
            "stdin": line.strip(),
            "own_group": os.getpgid(0) == os.getpid(),
            "ppid": os.getppid(),
        }
        out.write(json.dumps(seen))
    return int(argv[1])


def sleep(argv: list[str]) -> int:
    time.sleep(float(argv[0]))
    return 0
