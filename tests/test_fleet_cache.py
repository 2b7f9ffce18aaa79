"""A fleet of replicas (processes) on one real Redis store: one compile per key.

Each replica is ``python -m stitch.runtime.harness.fleet_replica`` with a local
cache of its own; they share only the store.  tests/test_fleet_store.py checks
the fleet cache's rules one by one without compiling.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_support import RedisServer, fresh_fleet_caches

from stitch.runtime.harness.fleet_replica import read_result
from stitch.runtime.store.shared.manifest import KEY_ENV, FleetKey

pytestmark = pytest.mark.slow
KEY = "fleet-test-key"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    folder = tmp_path / "redis"
    folder.mkdir()
    srv = RedisServer(folder)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def start(spec: dict[str, Any], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, KEY_ENV: KEY}
    env.pop("STITCH_CACHE_URL", None)
    env.pop("STITCH_CACHE_DIR", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stitch.runtime.harness.fleet_replica",
            json.dumps(spec),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def finish(proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    result = read_result(log.read_text())
    result["log"] = log.read_text()
    return result


def fleet(
    server: RedisServer, tmp_path: Path, n: int, model: str, **spec: Any
) -> list[dict[str, Any]]:
    """``n`` replicas started together on an empty local cache each."""
    at = time.time() + 3.0  # every replica has imported torch by then
    procs = []
    for _ in range(n):
        full = {
            "model": model,
            "layers": 2,
            "cache_dir": str(tmp_path / f"local{len(list(tmp_path.glob('local*')))}"),
            "cache_url": server.url,
            "start_at": at,
            **spec,
        }
        Path(full["cache_dir"]).mkdir()
        log = tmp_path / f"replica{len(list(tmp_path.glob('replica*')))}.log"
        procs.append((start(full, log), log))
    return [finish(p, log) for p, log in procs]


def test_four_replicas_started_together_compile_once(
    server: RedisServer, tmp_path: Path
):
    results = fleet(server, tmp_path, 4, "llama")
    compiled = [r for r in results if r["inductor_compiles"]]
    assert len(compiled) == 1, [(r["warm"], r["inductor_compiles"]) for r in results]
    assert all(r["tokens_equal"] for r in results)
    assert sum(r["warm"] for r in results) == 3
    # The others waited for the compile, or found it published already.
    for r in results:
        if r is not compiled[0]:
            assert "installed aot/" in r["log"], r["log"][-2000:]
    assert "published aot/" in compiled[0]["log"]
    # A replica started later, with an empty local cache, is warm from the store.
    (late,) = fleet(server, tmp_path, 1, "llama")
    assert late["warm"] and late["inductor_compiles"] == 0 and late["tokens_equal"]
    check_cache_commands(server, tmp_path)


def check_cache_commands(server: RedisServer, tmp_path: Path) -> None:
    """stitch cache ls / verify / pull / push on the store the fleet filled."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, KEY)
        fresh_fleet_caches()
        listed = cli(["cache", "ls", server.url])
        rows = [
            ln for ln in listed.splitlines() if ln.startswith("| ") and " ok " in ln
        ]
        assert len(rows) == 2, listed  # the saved forward's unit, the entry's
        assert cli(["cache", "verify", server.url]).endswith("2 entries, 0 refused\n")
        pulled = tmp_path / "pulled"
        out = cli(["cache", "pull", server.url, "--cache-dir", str(pulled)])
        assert "2 of 2 entr(ies)" in out, out
        # The pulled cache is whole (stitch inspect), and pushing it back names
        # the same two units: nothing new appears in the store.
        assert cli(["cache", "verify", str(pulled)], status=0)
        local = cli(["cache", "ls", str(pulled)])
        assert all(row.split("|")[1].strip() in local for row in rows), local
        cli(["cache", "push", server.url, "--cache-dir", str(pulled)])
        assert len(server.client().keys("stitch:entry:*")) == 2
        fresh_fleet_caches()


def cli(argv: list[str], status: int = 0) -> str:
    import contextlib
    import io

    from stitch.runtime.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        got = main(argv)
    assert got == status, out.getvalue()
    return out.getvalue()


def test_transformers_replicas_through_torch_compile_compile_once(
    server: RedisServer, tmp_path: Path
):
    results = fleet(server, tmp_path, 2, "hf-llama")
    assert sorted(bool(r["inductor_compiles"]) for r in results) == [False, True]
    assert all(r["tokens_equal"] for r in results)
    assert [r["warm"] for r in results if not r["inductor_compiles"]] == [True]


def test_a_tiered_replica_serves_while_another_compiles_then_swaps_its_pieces(
    server: RedisServer, tmp_path: Path
):
    # NOTE: [a tiered start]: the replica that waits for the lease serves on
    # uncompiled pieces, installs the holder's entry and swaps every piece in.
    results = fleet(server, tmp_path, 2, "hf-llama", tiered=True)
    holder = [r for r in results if r["inductor_compiles"]]
    assert len(holder) == 1, [
        (r["inductor_compiles"], r["log"][-1500:]) for r in results
    ]
    (waiter,) = [r for r in results if r is not holder[0]]
    for r in results:
        assert r["tier"] and r["settled"] and not r["uncompiled"], r["log"][-3000:]
        assert r["swapped"] == r["pieces"] > 0
        assert r["tokens_equal"] and r["tokens_equal_meanwhile"]
    assert waiter["installed"] and not holder[0]["installed"]
    assert "while serving on uncompiled pieces" in waiter["log"]
    assert "published " in holder[0]["log"], holder[0]["log"][-2000:]
    # A replica started later finds the published entry: warm, nothing compiled.
    (late,) = fleet(server, tmp_path, 1, "hf-llama", tiered=True)
    assert late["warm"] and not late["inductor_compiles"] and not late["tier"]


def test_a_tiered_replica_compiles_itself_when_the_holder_never_publishes(
    server: RedisServer, tmp_path: Path
):
    import threading

    # The unit's name, from a first replica's entry; then a store where a
    # replica that died holds that lease and no entry.  The lease goes once the
    # next replica serves and waits (as a dead holder's lease expires).
    fleet(server, tmp_path, 1, "hf-llama", tiered=True)
    client = server.client()
    (entry,) = client.keys("stitch:entry:*")
    unit = entry.decode().removeprefix("stitch:entry:")
    client.flushall()
    lease = f"stitch:lease:{unit}"
    client.set(lease, "dead-replica", px=600_000)

    def expire_when_waited() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            logs = [p.read_text() for p in tmp_path.glob("replica*.log")]
            if any("dead-replica holds the lease" in text for text in logs):
                client.delete(lease)
                return
            time.sleep(0.2)

    expiry = threading.Thread(target=expire_when_waited, daemon=True)
    expiry.start()
    (r,) = fleet(server, tmp_path, 1, "hf-llama", tiered=True, lease_s=2.0)
    expiry.join()
    assert "dead-replica holds the lease" in r["log"], r["log"][-2000:]
    assert "came free" in r["log"]
    assert r["inductor_compiles"] and not r["installed"] and not r["uncompiled"]
    assert r["swapped"] == r["pieces"] and r["tokens_equal_meanwhile"]
    assert client.keys("stitch:entry:*") == [entry]  # published after its swaps


def test_a_tiered_aot_replica_publishes_its_saved_forward_after_the_last_swap(
    server: RedisServer, tmp_path: Path
):
    (first,) = fleet(server, tmp_path, 1, "llama", tiered=True)
    assert first["tier"] and first["swapped"] == first["pieces"] > 0, first["log"]
    assert first["tokens_equal"] and first["tokens_equal_meanwhile"]
    assert "published aot/" in first["log"]
    # What it published is whole: the saved forward and every piece.
    (late,) = fleet(server, tmp_path, 1, "llama", tiered=True)
    assert late["warm"] and not late["inductor_compiles"] and not late["tier"]
    assert late["tokens_equal"], late["log"][-2000:]


def test_tampered_artifact_is_refused_compiled_again_and_republished(
    server: RedisServer, tmp_path: Path
):
    (first,) = fleet(server, tmp_path, 1, "llama")
    assert first["inductor_compiles"]
    client = server.client()
    # Another machine with write access to the store swaps one artifact's bytes
    # (it has no key, so it cannot sign a manifest for them).
    stored = client.get(next(iter(client.keys("stitch:entry:aot/*"))))
    entry = FleetKey(KEY.encode(), "test").open(stored, "the aot entry")
    sha = next(f.sha256 for f in entry.files if f.path.endswith("artifact.bin"))
    assert client.exists(f"stitch:blob:{sha}")
    client.set(f"stitch:blob:{sha}", b"import os; os.system('echo owned')")
    (second,) = fleet(server, tmp_path, 1, "llama")
    assert "refusing shared entry aot/" in second["log"]
    assert "does not match its sha256" in second["log"]
    assert second["inductor_compiles"] and second["tokens_equal"]
    assert "owned" not in second["log"]
    (third,) = fleet(server, tmp_path, 1, "llama")
    assert third["warm"] and not third["inductor_compiles"], third["log"][-2000:]


def test_a_dead_compiler_lease_expires_and_another_replica_compiles(
    server: RedisServer, tmp_path: Path
):
    local = tmp_path / "dead"
    local.mkdir()
    spec = {
        "model": "llama",
        "layers": 2,
        "cache_dir": str(local),
        "cache_url": server.url,
        "lease_s": 2.0,
        "compile_delay_s": 120.0,
    }
    dead = start(spec, tmp_path / "dead.log")
    client = server.client()
    deadline = time.monotonic() + 120
    while not client.keys("stitch:lease:*"):
        assert dead.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    (survivor,) = fleet(server, tmp_path, 1, "llama", lease_s=2.0)
    assert survivor["inductor_compiles"] and survivor["tokens_equal"]
    assert "is compiling" in survivor["log"] or not client.keys("stitch:lease:*")
