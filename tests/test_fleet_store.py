"""The fleet's cache on a real Redis server, unit by unit: trust, faults, leases, the cap.

A unit here is a folder of files shaped like a compile cache entry (an
artifact, then ``index.py``, the marker installed last); nothing is compiled.
tests/test_fleet_cache.py runs real models through it in several processes.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_support import RedisServer, fresh_fleet_caches

from stitch.runtime import CompilationConfig
from stitch.runtime.store.shared.fleet_cache import FleetCache
from stitch.runtime.store.shared.lease import (
    INSTALLED,
    Lease,
    end_turn,
    wait_turn,
)
from stitch.runtime.store.shared.manifest import KEY_ENV, KEY_FILE_ENV
from stitch.runtime.store.shared.units import Unit

KEY = "test-fleet-key"
UNIT = Unit("0123456789abcdef01234567/rank_0", "0123456789abcdef01234567/rank_0")


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


@pytest.fixture(autouse=True)
def fleet_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    monkeypatch.delenv("STITCH_CACHE_URL", raising=False)
    fresh_fleet_caches()
    yield
    fresh_fleet_caches()


def shared(url: str, **fields: object) -> FleetCache:
    fresh_fleet_caches()
    found = FleetCache.of(CompilationConfig(cache_url=url, **fields).cache)  # type: ignore[arg-type]
    assert found is not None
    return found


class Asked:
    """A store that records which of its calls were made, in order."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> object:
        found = getattr(self._store, name)
        if not callable(found):
            return found

        def call(*args: object, **kwargs: object) -> object:
            self.calls.append(name)
            return found(*args, **kwargs)

        return call


def asked(cache: FleetCache) -> Asked:
    spy = Asked(cache.store)
    cache.store = spy  # type: ignore[assignment]
    return spy


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """Every socket connect the redis client makes, by the timeout it was given."""
    import redis.connection

    seen: list[float | None] = []
    real = redis.connection.Connection._connect

    def spy(self: redis.connection.Connection) -> object:
        seen.append(self.socket_connect_timeout)
        return real(self)

    monkeypatch.setattr(redis.connection.Connection, "_connect", spy)
    return seen


def make_unit(root: Path, payload: bytes = b"compiled piece") -> Path:
    entry = root / UNIT.folder
    (entry / "artifacts" / "k1").mkdir(parents=True, exist_ok=True)
    (entry / "artifacts" / "k1" / "artifact.bin").write_bytes(payload)
    (entry / "execution_fn.py").write_text("def execution_fn(): pass\n")
    (entry / "index.py").write_text("{'kind': 'index'}\n")
    (entry / "index.lock").write_text("")
    (entry / ".tmp-xyz").write_text("half")
    for folder in (root, *root.rglob("*")):
        if folder.is_dir():
            folder.chmod(0o700)
    return entry


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_published_unit_installs_in_another_root(server: RedisServer, tmp_path: Path):
    src, dst = tmp_path / "a", tmp_path / "b"
    make_unit(src)
    assert shared(server.url).publish(str(src), UNIT)
    assert shared(server.url).fetch(str(dst), UNIT)
    got = tree(dst)
    # What is shared: no lock, no temporary file.
    assert sorted(got) == sorted(
        f"{UNIT.folder}/{name}"
        for name in ("artifacts/k1/artifact.bin", "execution_fn.py", "index.py")
    )
    assert got == {k: v for k, v in tree(src).items() if k in got}
    for path in (dst / UNIT.folder).rglob("*"):
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_two_publishers_of_one_key_agree_and_one_wins(
    server: RedisServer, tmp_path: Path
):
    make_unit(tmp_path / "a")
    make_unit(tmp_path / "b")
    first, second = shared(server.url), shared(server.url)
    assert first.publish(str(tmp_path / "a"), UNIT)
    stored = server.client().get(f"stitch:entry:{UNIT.name}")
    assert second.publish(str(tmp_path / "b"), UNIT)
    assert server.client().get(f"stitch:entry:{UNIT.name}") == stored


def test_partial_upload_is_never_visible(server: RedisServer, tmp_path: Path):
    make_unit(tmp_path / "a")
    t = shared(server.url)
    # A publisher that dies after its blobs: no manifest, nothing to fetch.
    t._commit = lambda unit, entry: False  # type: ignore[method-assign]
    assert not t.publish(str(tmp_path / "a"), UNIT)
    assert server.client().keys("stitch:blob:*")
    assert not shared(server.url).fetch(str(tmp_path / "b"), UNIT)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "damage, why",
    [
        ("flip a byte of the manifest", "signed with another key"),
        ("another key signed it", "signed with another key"),
        ("unsigned", "not signed"),
        ("evict a blob", "is gone"),
        ("replace a blob's bytes", "does not match its sha256"),
        ("name a file outside the unit", "outside the unit"),
    ],
)
def test_damaged_entry_is_refused_once_and_nothing_is_installed(
    server: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    damage: str,
    why: str,
):
    make_unit(tmp_path / "a", payload=b"x" * 1000)
    client = server.client()
    entry_key = f"stitch:entry:{UNIT.name}"
    if damage == "another key signed it":
        monkeypatch.setenv(KEY_ENV, "someone-else")
    publisher = shared(server.url)
    if damage == "name a file outside the unit":
        import dataclasses

        wide = dataclasses.replace(UNIT, folder="0123456789abcdef01234567")
        assert publisher.publish(str(tmp_path / "a"), wide)
        # The signed manifest names rank_0/... relative to another folder: the
        # same bytes under a unit they do not belong to.
        entry = publisher.key.open(client.get(f"stitch:entry:{wide.name}"), "x")
        import msgspec

        outside = msgspec.structs.replace(
            entry,
            unit=UNIT.name,
            files=(
                *entry.files[:-1],
                msgspec.structs.replace(entry.files[-1], path="ab/cd"),
            ),
        )
        client.set(entry_key, publisher.key.seal(outside))
    else:
        assert publisher.publish(str(tmp_path / "a"), UNIT)
    monkeypatch.setenv(KEY_ENV, KEY)
    stored = client.get(entry_key)
    if damage == "flip a byte of the manifest":
        i = stored.index(b"writer")
        client.set(entry_key, stored[:i] + b"W" + stored[i + 1 :])
    elif damage == "unsigned":
        client.set(entry_key, stored[65:])
    elif damage == "evict a blob":
        blobs = client.keys("stitch:blob:*")
        client.delete(*blobs[:1])
        # The marker is installed last, so the order of eviction decides
        # nothing: whichever blob is gone, the folder never gets its index.
    elif damage == "replace a blob's bytes":
        for key in client.keys("stitch:blob:*"):
            client.set(key, b"y" * 1000)
    caplog.set_level(logging.INFO, logger="stitch")
    reader = shared(server.url)
    dst = tmp_path / "b"
    assert not reader.fetch(str(dst), UNIT)
    assert not reader.fetch(str(dst), UNIT)  # refused once, not again
    assert wait_turn(reader, str(dst), UNIT) != INSTALLED
    refused = [w for w in warnings_of(caplog) if "refusing shared entry" in w]
    assert len(refused) == 1 and UNIT.name in refused[0] and why in refused[0], refused
    assert not (dst / UNIT.folder / "index.py").exists()
    # The replica compiles and publishes again: the store heals.
    make_unit(dst, payload=b"x" * 1000)
    assert reader.publish(str(dst), UNIT)
    assert shared(server.url).fetch(str(tmp_path / "c"), UNIT)


def test_without_a_key_the_fleet_cache_is_off_with_one_warning(
    server: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch
):
    monkeypatch.delenv(KEY_ENV)
    fresh_fleet_caches()
    config = CompilationConfig(cache_url=server.url)
    assert FleetCache.of(config.cache) is None and FleetCache.of(config.cache) is None
    off = [w for w in warnings_of(caplog) if "is off" in w]
    assert len(off) == 1 and KEY_ENV in off[0] and server.url in off[0], off


def test_key_file_must_be_private(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.delenv(KEY_ENV)
    key = tmp_path / "fleet.key"
    key.write_text("secret\n")
    key.chmod(0o644)
    monkeypatch.setenv(KEY_FILE_ENV, str(key))
    fresh_fleet_caches()
    assert (
        FleetCache.of(CompilationConfig(cache_url="redis://127.0.0.1:1/0").cache)
        is None
    )
    assert any("0644" in w and str(key) in w for w in warnings_of(caplog))
    key.chmod(0o600)
    fresh_fleet_caches()
    assert FleetCache.of(CompilationConfig(cache_url="redis://127.0.0.1:1/0").cache)


def test_unreachable_store_is_one_warning_and_never_a_hang(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, connects: list[float | None]
):
    from redis_support import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    t = shared(url)
    store = asked(t)
    make_unit(tmp_path / "a")
    assert wait_turn(t, str(tmp_path / "b"), UNIT) == Lease(UNIT, False)
    assert not t.publish(str(tmp_path / "a"), UNIT)
    assert not t.fetch(str(tmp_path / "b"), UNIT)
    # Never a hang: the store was asked once, on one connect bounded by its
    # timeout and not retried; after that nothing asks it again.
    assert store.calls == ["get_entry"], store.calls
    assert connects == [2.0], connects
    down = [w for w in warnings_of(caplog) if "did not answer" in w]
    assert len(down) == 1 and url in down[0], down


def test_store_killed_mid_run_then_restarted_empty(
    server: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    connects: list[float | None],
):
    make_unit(tmp_path / "a")
    t = shared(server.url)
    assert t.publish(str(tmp_path / "a"), UNIT)
    server.stop()
    store = asked(t)
    connects.clear()
    assert not t.fetch(str(tmp_path / "b"), UNIT)
    assert not t.publish(str(tmp_path / "a"), UNIT)
    # Asked once after the kill, at most one connect (bounded, not retried).
    assert store.calls == ["get_entry"], store.calls
    assert connects in ([], [2.0]), connects
    assert len([w for w in warnings_of(caplog) if "did not answer" in w]) == 1
    # Restarted (no persistence: flushed): a new process misses, compiles,
    # publishes, and the next one installs.
    server.start()
    fresh = shared(server.url)
    assert not fresh.fetch(str(tmp_path / "b"), UNIT)
    assert fresh.publish(str(tmp_path / "a"), UNIT)
    assert shared(server.url).fetch(str(tmp_path / "c"), UNIT)


def test_waiting_replica_installs_what_the_lease_holder_publishes(
    server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    holder, waiter = shared(server.url), shared(server.url)
    turn = wait_turn(holder, str(tmp_path / "a"), UNIT)
    assert isinstance(turn, Lease) and turn.held
    got: list[object] = []
    thread = threading.Thread(
        target=lambda: got.append(wait_turn(waiter, str(tmp_path / "b"), UNIT))
    )
    thread.start()
    time.sleep(1.0)
    assert not got  # waiting, not compiling
    make_unit(tmp_path / "a")
    end_turn(holder, str(tmp_path / "a"), turn, True)
    thread.join(timeout=10)
    assert got == [INSTALLED]
    assert server.client().get(f"stitch:lease:{UNIT.name}") is None
    # One warning when the wait starts, naming the unit, the holder, the store
    # and the bound; nothing more at WARNING when the entry arrives.
    (started,) = warnings_of(caplog)
    assert f"{holder.owner} holds the lease of {UNIT.name} on {server.url}" in started
    assert "at most 600s (cache_wait_s)" in started


def test_an_entry_published_between_a_look_and_the_lease_is_installed(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # The holder publishes, then lets the lease go.  A waiter that looked for
    # the entry just before the publish found the lease free just after, and
    # compiled the unit a second time (CI, torch 2.15: "the lease came free
    # after 1s ... compiling it here" from a holder that had published).
    holder, waiter = shared(server.url), shared(server.url)
    turn = wait_turn(holder, str(tmp_path / "a"), UNIT)
    assert isinstance(turn, Lease) and turn.held
    make_unit(tmp_path / "a")
    looked = waiter.fetch

    def look_then_the_holder_ends(root: str, unit: Unit) -> bool:
        found = looked(root, unit)
        if not found and turn.held and not turn._stop.is_set():
            end_turn(holder, str(tmp_path / "a"), turn, True)  # just after the look
        return found

    monkeypatch.setattr(waiter, "fetch", look_then_the_holder_ends)
    assert wait_turn(waiter, str(tmp_path / "b"), UNIT) == INSTALLED
    got = tree(tmp_path / "b")
    assert f"{UNIT.folder}/artifacts/k1/artifact.bin" in got
    assert got == {k: v for k, v in tree(tmp_path / "a").items() if k in got}
    assert server.client().get(f"stitch:lease:{UNIT.name}") is None


def test_lease_of_a_dead_replica_expires_and_the_next_takes_over(
    server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    dead = shared(server.url, cache_lease_s=1.0)
    turn = wait_turn(dead, str(tmp_path / "a"), UNIT)
    assert isinstance(turn, Lease) and turn.held
    turn._stop.set()  # it dies: no renewal, no release
    waiter = shared(server.url, cache_lease_s=1.0)
    store = asked(waiter)
    left_ms = server.client().pttl(f"stitch:lease:{UNIT.name}")
    assert 0 < left_ms <= 1000  # it lapses within lease_s
    nxt = wait_turn(waiter, str(tmp_path / "b"), UNIT)
    assert isinstance(nxt, Lease) and nxt.held
    # Refused while it held, taken at the first poll after it lapsed: a poll
    # comes every quarter of lease_s (250 ms here, the sleep its least).
    takes = store.calls.count("take_lease")
    assert 2 <= takes <= 2 + left_ms // 250, store.calls
    started, ended = warnings_of(caplog)
    assert dead.owner in started and "came free" in ended and dead.owner in ended


def test_a_lease_is_renewed_and_released_only_by_its_holder(
    server: RedisServer,
) -> None:
    """NOTE: [a lease is redis-py's Lock]: take if free, renew and release only
    by the holder, the holder's name readable, lapse after its TTL."""
    from stitch.runtime.store.shared.stores import RedisStore

    store = RedisStore(server.url)
    try:
        assert store.take_lease("u", "a", 0.6)
        assert not store.take_lease("u", "b", 0.6)
        assert store.lease_holder("u") == "a"
        assert not store.renew_lease("u", "b", 0.6)
        store.release_lease("u", "b")  # not b's: nothing happens
        assert store.lease_holder("u") == "a"
        for _ in range(3):  # renewed past its first TTL, as while compiling
            time.sleep(0.3)
            assert store.renew_lease("u", "a", 0.6)
        assert store.lease_holder("u") == "a"
        store.release_lease("u", "a")
        assert store.lease_holder("u") is None
        assert not store.renew_lease("u", "a", 0.6)  # released: not renewed
        assert store.take_lease("u", "b", 0.3)
        time.sleep(0.6)  # b dies: its lease lapses
        assert store.lease_holder("u") is None and store.take_lease("u", "a", 0.6)
    finally:
        store.close()


def test_wait_is_bounded_and_the_waiter_compiles_itself(
    server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    holder = shared(server.url, cache_lease_s=1.0)
    turn = wait_turn(holder, str(tmp_path / "a"), UNIT)
    assert isinstance(turn, Lease) and turn.held  # renewed while "compiling"
    waiter = shared(server.url, cache_wait_s=2.0)
    store = asked(waiter)
    got = wait_turn(waiter, str(tmp_path / "b"), UNIT)
    assert got == Lease(UNIT, False)
    started, ended = warnings_of(caplog)
    assert "holds the lease of" in started and "at most 2s" in started
    assert f"for {holder.owner} to compile {UNIT.name}; compiling it here" in ended
    # It gave up at its bound by its own clock, not before, and polled all the
    # while, a poll every quarter of lease_s at most every half second (the
    # sleep its least): the lease refused at each.
    assert int(re.search(r"waited (\d+)s for", ended)[1]) >= 2, ended
    poll_ms = round(min(0.5, waiter.lease_s / 4) * 1000)
    takes = store.calls.count("take_lease")
    assert 2 <= takes <= 2 + 2000 // poll_ms, store.calls
    end_turn(holder, str(tmp_path / "a"), turn, False)


def test_a_wait_is_visible_with_no_logging_configured(
    server: RedisServer, tmp_path: Path
):
    # A fresh interpreter that configures no logging, as a user's script:
    # Python shows warnings only, on stderr.
    holder = shared(server.url)
    turn = wait_turn(holder, str(tmp_path / "a"), UNIT)
    assert isinstance(turn, Lease) and turn.held
    code = (
        "from stitch.runtime import CompilationConfig\n"
        "from stitch.runtime.store.shared.fleet_cache import FleetCache\n"
        "from stitch.runtime.store.shared.lease import wait_turn\n"
        "from stitch.runtime.store.shared.units import Unit\n"
        f"config = CompilationConfig(cache_url={server.url!r}, cache_wait_s=2.0)\n"
        f"unit = Unit({UNIT.name!r}, {UNIT.folder!r})\n"
        f"print(wait_turn(FleetCache.of(config.cache), {str(tmp_path / 'b')!r}, unit))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, KEY_ENV: KEY},
        capture_output=True,
        text=True,
        timeout=120,
    )
    end_turn(holder, str(tmp_path / "a"), turn, False)
    assert proc.returncode == 0, proc.stderr
    assert "held=False" in proc.stdout  # waited, then compiled itself
    lines = proc.stderr.splitlines()
    started = [line for line in lines if "holds the lease of" in line]
    assert len(started) == 1, proc.stderr
    assert holder.owner in started[0] and UNIT.name in started[0]
    assert "at most 2s" in started[0]
    assert any("compiling it here" in line for line in lines), proc.stderr
    assert "stitch: waiting for" not in proc.stderr  # no bar: not a terminal


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_wait_shows_the_progress_bar_on_a_terminal(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    holder = shared(server.url)
    turn = wait_turn(holder, str(tmp_path / "a"), UNIT)
    assert isinstance(turn, Lease)
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    got = wait_turn(shared(server.url, cache_wait_s=1.5), str(tmp_path / "b"), UNIT)
    monkeypatch.undo()
    end_turn(holder, str(tmp_path / "a"), turn, False)
    assert got == Lease(UNIT, False)
    drawn = screen.getvalue()
    assert f"stitch: waiting for {holder.owner}" in drawn, drawn
    assert "/2 [" in drawn  # seconds of the bound


@pytest.mark.parametrize("command", ["ls", "verify", "push", "pull"])
def test_commands_on_an_unreachable_store_exit_2(
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    connects: list[float | None],
):
    from redis_support import free_port

    from stitch.runtime.cli.main import main

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    make_unit(tmp_path / "cache")
    extra = (
        ["--cache-dir", str(tmp_path / "cache")] if command in ("push", "pull") else []
    )
    assert main(["cache", command, url, *extra]) == 2
    assert connects == [2.0], connects  # one bounded connect, not retried
    assert f"error: the store {url} did not answer" in capsys.readouterr().out


def test_size_cap_evicts_least_recently_used(server: RedisServer, tmp_path: Path):
    units = [Unit(f"{i:024x}/rank_0", f"{i:024x}/rank_0") for i in range(3)]
    t = shared(server.url, cache_store_max_bytes=2500)
    for i, unit in enumerate(units):
        root = tmp_path / f"r{i}"
        folder = root / unit.folder
        folder.mkdir(parents=True)
        (folder / "artifact.bin").write_bytes(bytes([i]) * 1000)
        (folder / "index.py").write_text("{}\n")
        if i == 2:  # the first is used again: the second is now the oldest
            assert t.fetch(str(tmp_path / "again"), units[0])
        assert t.publish(str(root), unit)
        time.sleep(0.01)
    client = server.client()
    left = sorted(k.decode() for k in client.keys("stitch:entry:*"))
    assert left == [f"stitch:entry:{units[0].name}", f"stitch:entry:{units[2].name}"]
    # The evicted entry's own blob went with it; the shared index.py stayed.
    assert len(client.keys("stitch:blob:*")) == 3


def blob_keys(server: RedisServer) -> set[str]:
    prefix = "stitch:blob:"
    return {k.decode()[len(prefix) :] for k in server.client().keys(prefix + "*")}


def small_unit(root: Path, i: int) -> Unit:
    unit = Unit(f"{i:024x}/rank_0", f"{i:024x}/rank_0")
    folder = root / unit.folder
    folder.mkdir(parents=True)
    (folder / "artifact.bin").write_bytes(bytes([i]) * 1000)
    (folder / "index.py").write_text("{}\n")
    return unit


def test_orphans_of_a_partial_upload_are_counted_then_collected(
    server: RedisServer, tmp_path: Path
):
    t = shared(server.url, cache_store_max_bytes=2500, cache_lease_s=1.0)
    assert t.publish(str(tmp_path / "r0"), small_unit(tmp_path / "r0", 0))
    named = blob_keys(server)
    # A publisher killed after its blobs: 3000 bytes that no entry names.
    make_unit(tmp_path / "dead", b"x" * 3000)
    dead = shared(server.url)
    dead._commit = lambda unit, entry: False  # type: ignore[method-assign]
    assert not dead.publish(str(tmp_path / "dead"), UNIT)
    orphans = blob_keys(server) - named
    assert len(orphans) == 3
    # Their stamps lost too (a server evicting keys itself): stamped when found.
    server.client().delete("stitch:stamps")
    # Young orphans may be an upload in progress: kept, but counted, so the
    # store (1003 + 1000 named, 3000+ orphaned) is over its cap and the least
    # recently used entry goes.
    t = shared(server.url, cache_store_max_bytes=2500, cache_lease_s=1.0)
    r1 = small_unit(tmp_path / "r1", 1)
    assert t.publish(str(tmp_path / "r1"), r1)
    client = server.client()
    assert [k.decode() for k in client.keys("stitch:entry:*")] == [
        f"stitch:entry:{r1.name}"
    ]
    assert orphans <= blob_keys(server)
    # A lease later they are collected; the entries' blobs stay.
    time.sleep(1.2)
    r2 = small_unit(tmp_path / "r2", 2)
    assert t.publish(str(tmp_path / "r2"), r2)
    assert not orphans & blob_keys(server)
    assert len(client.keys("stitch:entry:*")) == 2
    assert len(blob_keys(server)) == 3  # two artifacts, one shared index.py
    assert client.zcard("stitch:stamps") == 3
    for unit in (r1, r2):
        assert shared(server.url).fetch(str(tmp_path / "again"), unit)


def test_blobs_of_a_replaced_entry_are_collected_after_a_lease(
    server: RedisServer, tmp_path: Path
):
    from stitch.runtime.store.digests import content_hash

    make_unit(tmp_path / "a", b"first build")
    make_unit(tmp_path / "b", b"second build")  # compiled again: other bytes
    t = shared(server.url, cache_store_max_bytes=10**6, cache_lease_s=0.5)
    assert t.publish(str(tmp_path / "a"), UNIT)
    assert t.publish(str(tmp_path / "b"), UNIT)  # replaces the entry
    old = content_hash(b"first build")
    assert old in blob_keys(server)  # stamped just now: kept a lease
    time.sleep(0.7)
    assert t.publish(str(tmp_path / "b"), UNIT)
    assert old not in blob_keys(server)
    assert shared(server.url).fetch(str(tmp_path / "c"), UNIT)
    artifact = tmp_path / "c" / UNIT.folder / "artifacts" / "k1" / "artifact.bin"
    assert artifact.read_bytes() == b"second build"
