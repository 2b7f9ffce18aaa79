"""Processes and the cache: one killed while compiling, and two compiling at once.

A process killed (SIGKILL) right after its first compiled piece was recorded
leaves a cache from which the next run compiles only the missing pieces.  Two
processes compiling the same model into one empty cache at once all get
correct results with no warning, and a third run starts warm with no compile.

NOTE: [two racing processes are enough]
Index updates are serialized by flock and artifacts are published by atomic
rename, first writer wins: two processes racing meet every one of those paths
(a winner and a loser per artifact, interleaved index updates); more
processes would only add more of the same, at seconds of CPU each.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from stitch.runtime import CompilationConfig
from stitch.runtime.cli.inspect_job import inspect_cache
from stitch.runtime.store.index import INDEX_FILE, parse_index

from backend_support import (
    INDUCTOR_TOL,
    TINY,
    compile_model,
    counting,
    eager_and_compiled,
    model_for,
    parse_worker,
    stitch_warnings,
    worker_command,
    worker_env,
)

# Every test starts processes that compile with Inductor.
# See NOTE: [many compiles of one forward] in conftest.py.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("dynamo_state")]

# One target per piece: three artifacts, so that fresh processes stay cheap;
# compiled in the backend call (the tests count them: tiered_start=False).
CONFIG = {"max_num_batched_tokens": 32, "tiered_start": False}
ARTIFACTS = 3
SIZES = [8, 3]
CACHE_WORKER = Path(__file__).with_name("cache_worker.py")


def compile_here(
    root: Path, caplog: pytest.LogCaptureFixture
) -> tuple[Any, dict[str, int], list[str]]:
    caplog.clear()
    model = model_for(TINY)
    be, fn = compile_model(model, CompilationConfig(cache_dir=str(root), **CONFIG))
    with caplog.at_level(logging.WARNING, logger="stitch"), counting() as deltas:
        for n in SIZES:
            ref, out = eager_and_compiled(model, fn, TINY, n)
            torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    return be, deltas, stitch_warnings(caplog)


def wait_for(paths: list[Path], procs: list[subprocess.Popen[str]], what: str) -> None:
    deadline = time.monotonic() + 300
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(
                    f"a worker exited ({proc.returncode}) before {what}\n{out}\n{err}"
                )
        assert time.monotonic() < deadline, f"workers never got to {what}"
        time.sleep(0.05)


def start(spec: dict[str, Any], script: Path | None = None) -> subprocess.Popen[str]:
    command = worker_command(spec)
    if script is not None:
        command[1] = str(script)
    return subprocess.Popen(
        command,
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_process_killed_while_compiling_loses_only_what_was_not_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "cache"
    recorded = tmp_path / "recorded"
    spec = {
        "cache_dir": str(root),
        "config": CONFIG,
        "sizes": SIZES,
        "recorded_file": str(recorded),
    }
    proc = start(spec, CACHE_WORKER)
    try:
        wait_for([recorded], [proc], "recording a piece")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    (index_path,) = root.rglob(INDEX_FILE)
    read = parse_index(index_path.read_text(), None)
    assert read.problems == [] and read.index is not None
    assert list(read.index.pieces) == ["submod_0"]

    _, deltas, warnings = compile_here(root, caplog)
    assert warnings == []
    assert deltas["num_cache_hits"] == 1
    assert deltas["num_inductor_compiles"] == ARTIFACTS - 1
    _, deltas, warnings = compile_here(root, caplog)
    assert warnings == [] and deltas.get("num_inductor_compiles", 0) == 0


def test_two_processes_compile_into_one_empty_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "cache"
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [
        start(
            {
                "cache_dir": str(root),
                "config": CONFIG,
                "sizes": SIZES,
                "ready_file": str(r),
                "go_file": str(go),
            }
        )
        for r in ready
    ]
    try:
        # All have imported torch and built the model: start them together.
        wait_for(ready, procs, "getting ready")
        go.write_text("go")
        reports = [parse_worker(p.wait(timeout=400), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()

    for report in reports:
        assert report["warnings"] == []
        assert max(report["diffs"].values()) < INDUCTOR_TOL["atol"], report["diffs"]
        assert report["counter"].get("num_cache_faults", 0) == 0
    (entry,) = {r["compiled"][0]["cache_dir"] for r in reports}
    # Each artifact was published once; the loser's copies left nothing behind.
    assert len(os.listdir(Path(entry) / "artifacts")) == ARTIFACTS
    out = io.StringIO()
    assert inspect_cache(str(root), out) == 0, out.getvalue()

    be, deltas, warnings = compile_here(root, caplog)
    assert warnings == []
    assert deltas.get("num_inductor_compiles", 0) == 0
    assert deltas["num_cache_hits"] == ARTIFACTS
    assert be.compiled[0].warm is True
