"""A real Redis server for the fleet tests: started, killed and restarted by them.

Debian's ``redis-server`` (``apt-get install redis-server``; .ci/run installs
it), on 127.0.0.1 and a free port, with no persistence, in a folder of the
test's own.  Without the binary the tests skip, unless ``$STITCH_REQUIRE_REDIS``
is set (CI sets it), where they fail: a skip there would pass vacuously.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REQUIRE_ENV = "STITCH_REQUIRE_REDIS"


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        why = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{why}; ${REQUIRE_ENV} is set")
        pytest.skip(why)
    pytest.importorskip(
        "redis", reason="the redis client (pip install 'stitch[fleet]')"
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process; ``url`` stays the same across restarts."""

    def __init__(self, folder: Path, maxmemory: str = "") -> None:
        self.binary = redis_binary()
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.maxmemory = maxmemory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.folder),
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru"]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)


def fresh_fleet_caches() -> None:
    """Forget the fleet caches this process opened (each test's store is another)."""
    from stitch.runtime.store.shared.fleet_cache import FleetCache

    FleetCache._open.clear()
