"""A fleet's start: replicas sharing one Redis store against lone cold and warm starts.

Run: ``python bench/fleet_start.py [--replicas 4] [--model llama|hf-llama|both]
[--layers 2]``.  Needs ``redis-server`` (Debian's package) and the redis client
(``pip install 'stitch[fleet]'``); the benchmark starts its own server on
127.0.0.1 and a free port, with no persistence, and stops it.

Every row is one process (``stitch.runtime.harness.fleet_replica``) with a
local cache of its own, measured in one run:

``lone cold``      no store, empty local cache: traces and compiles.
``lone warm``      no store, the local cache the cold run filled.
``fleet, empty``   N replicas started together (same instant) on an empty
                   store: one compiles, the others wait and install.
``fleet, warm``    N replicas started together on the store the row above
                   filled, each with an empty local cache.
``lone, warm store``  one process, an empty local cache, the warm store: to
                   compare with ``lone warm`` (the fleet rows share 2 cores).

"first forward" is from the call into Stitch (``aot_compile`` for the example,
``torch.compile``'s first call for transformers) to the first forward's result;
"compiles" counts Inductor compiles in that process.  Each process checks its
greedy tokens against eager's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from stitch.runtime.harness.fleet_replica import read_result

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(folder: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("error: redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    args += ["--appendonly", "no", "--dir", folder]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"error: redis-server did not start on port {port}")


def replicas(specs: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Run one process per spec, all started together; their results."""
    env = {**os.environ, "STITCH_CACHE_KEY": key}
    env.pop("STITCH_CACHE_URL", None)
    at = time.time() + 4.0  # every process has imported torch by then
    procs = []
    for spec in specs:
        os.makedirs(spec["cache_dir"], exist_ok=True)
        cmd = [sys.executable, "-m", "stitch.runtime.harness.fleet_replica"]
        procs.append(
            subprocess.Popen(
                [*cmd, json.dumps({**spec, "start_at": at})],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        )
    out = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=900)
        if proc.returncode:
            sys.exit(f"error: a replica failed ({proc.returncode})")
        out.append(read_result(stdout.decode()))
    return out


def run_model(model: str, n: int, layers: int, work: str, url: str) -> list[list[Any]]:
    key = secrets.token_hex(16)
    base = {"model": model, "layers": layers}
    rows: list[list[Any]] = []

    def add(label: str, results: list[dict[str, Any]]) -> None:
        for i, r in enumerate(results):
            rows.append(
                [
                    model,
                    label,
                    i,
                    f"{r['first_forward_s']:.2f}",
                    r["inductor_compiles"],
                    "warm" if r["warm"] else "cold",
                    "yes" if r["tokens_equal"] else "NO",
                ]
            )

    lone = os.path.join(work, model, "lone")
    add("lone cold", replicas([{**base, "cache_dir": lone}], key))
    add("lone warm", replicas([{**base, "cache_dir": lone}], key))
    fleet = [
        {**base, "cache_dir": os.path.join(work, model, f"empty{i}"), "cache_url": url}
        for i in range(n)
    ]
    add(f"fleet of {n}, empty store", replicas(fleet, key))
    warm = [
        {**base, "cache_dir": os.path.join(work, model, f"warm{i}"), "cache_url": url}
        for i in range(n)
    ]
    add(f"fleet of {n}, warm store", replicas(warm, key))
    alone = {**base, "cache_dir": os.path.join(work, model, "alone"), "cache_url": url}
    add("lone, warm store", replicas([alone], key))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument(
        "--model", choices=("llama", "hf-llama", "both"), default="both"
    )
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, REPO)
    from stitch.runtime.tables import markdown_table

    models = ["llama", "hf-llama"] if args.model == "both" else [args.model]
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="stitch-fleet-") as work:
        server, url = start_redis(work)
        try:
            for model in models:
                rows += run_model(model, args.replicas, args.layers, work, url)
        finally:
            server.kill()
            server.wait()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; {args.layers} layers"
    )
    header = [
        "model",
        "run",
        "process",
        "first forward s",
        "compiles",
        "start",
        "tokens = eager",
    ]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
