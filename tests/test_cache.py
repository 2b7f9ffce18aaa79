"""The persistent compile cache: faults it survives, and concurrent writers.

Each fault is injected into a copy of a populated cache entry.  The next compile
must log exactly one warning naming the broken file, rebuild what that file held
(and nothing else), give correct results, and leave an entry that the compile
after it loads warm with no warning at all.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import os
import pprint
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
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

from stitch.runtime import CompilationConfig, source_filename
from stitch.runtime.cache import INDEX_FILE, SOURCE_FILE

# Three compiled pieces, each for its general shape and size 4: six artifacts.
CONFIG = {"compile_sizes": [4], "max_num_batched_tokens": 32}
ARTIFACTS = 3 * 2
RUN_SIZES = (8, 4, 20)


@pytest.fixture(scope="module", autouse=True)
def dynamo_state() -> Any:
    # See NOTE: [many compiles of one forward] in test_backend.py.
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=64):
        yield
    torch._dynamo.reset()


@dataclasses.dataclass
class Run:
    backend: Any
    deltas: dict[str, int]
    warnings: list[str]


def compile_and_check(cache_root: Path, caplog: pytest.LogCaptureFixture) -> Run:
    """Compile the tiny model with ``cache_root``; check every run against eager."""
    caplog.clear()
    model = model_for(TINY)
    be, fn = compile_model(
        model, CompilationConfig(cache_dir=str(cache_root), **CONFIG)
    )
    with caplog.at_level(logging.WARNING, logger="stitch"), counting() as deltas:
        for n in RUN_SIZES:
            ref, out = eager_and_compiled(model, fn, TINY, n)
            torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    assert len(be.compiled) == 1
    return Run(be, deltas, stitch_warnings(caplog))


@dataclasses.dataclass
class Populated:
    root: Path
    entry: Path  # the entry directory, relative to root
    code: str
    index: dict[str, Any]


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Populated:
    root = tmp_path_factory.mktemp("populated")
    model = model_for(TINY)
    be, fn = compile_model(model, CompilationConfig(cache_dir=str(root), **CONFIG))
    with counting() as deltas:
        eager_and_compiled(model, fn, TINY, 8)
    assert deltas["num_compiled_artifacts_saved"] == ARTIFACTS
    (result,) = be.compiled
    entry = Path(result.cache_dir)
    index = ast.literal_eval((entry / INDEX_FILE).read_text())
    return Populated(root, entry.relative_to(root), result.code, index)


def artifact_of(index: dict[str, Any], piece: str, target: str) -> str:
    (entry,) = [e for e in index["pieces"][piece]["entries"] if e["target"] == target]
    return entry["artifact"]


def write_index(path: Path, index: dict[str, Any]) -> None:
    path.write_text(pprint.pformat(index, sort_dicts=True) + "\n")


# -- faults ------------------------------------------------------------------------------
# Each injector breaks the entry at ``entry`` and returns the path the warning
# must name.  ``marker`` is a file that must never come to exist: code planted
# in the cache writes it if the cache ever executes that code.

BROKEN_ARTIFACT = ("submod_2", "size4")


def truncate_index(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    path = entry / INDEX_FILE
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    return path


def code_in_index(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    # Valid Python, but not a literal: reading it must not run it.
    path = entry / INDEX_FILE
    path.write_text(f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')\n")
    return path


def foreign_index_format(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    path = entry / INDEX_FILE
    write_index(path, {**index, "format": 999})
    return path


def remove_artifact(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    path = entry / artifact_of(index, *BROKEN_ARTIFACT)
    path.unlink()
    return path


def corrupt_artifact(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    path = entry / artifact_of(index, *BROKEN_ARTIFACT)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))
    return path


def unloadable_artifact(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    # Garbage whose sha256 the index agrees with: only loading can tell.
    import hashlib

    relative = artifact_of(index, *BROKEN_ARTIFACT)
    path = entry / relative
    garbage = b"not an Inductor artifact\n" * 64
    path.write_bytes(garbage)
    for record in index["pieces"][BROKEN_ARTIFACT[0]]["entries"]:
        if record["artifact"] == relative:
            record["sha256"] = hashlib.sha256(garbage).hexdigest()
    write_index(entry / INDEX_FILE, index)
    return path


def tamper_source(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    path = entry / SOURCE_FILE
    path.write_text(
        f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')\n"
        "def execution_fn(*args, __vllm_submods__, __vllm_dispatch__=None):\n"
        "    raise RuntimeError('tampered execution_fn.py ran')\n"
    )
    return path


# fault -> (injector, Inductor compiles the rebuild takes)
FAULTS: dict[str, tuple[Callable[[Path, dict[str, Any], Path], Path], int]] = {
    "index-truncated": (truncate_index, ARTIFACTS),
    "index-not-a-literal": (code_in_index, ARTIFACTS),
    "index-foreign-format": (foreign_index_format, ARTIFACTS),
    "artifact-missing": (remove_artifact, 1),
    "artifact-corrupted": (corrupt_artifact, 1),
    "artifact-fails-to-load": (unloadable_artifact, 1),
    "source-tampered": (tamper_source, 0),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_cache_fault_is_survived_with_one_warning(
    fault: str, populated: Populated, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inject, compiles = FAULTS[fault]
    root = tmp_path / "cache"
    shutil.copytree(populated.root, root)
    entry = root / populated.entry
    marker = tmp_path / "planted-code-ran"
    broken = inject(entry, ast.literal_eval(repr(populated.index)), marker)

    run = compile_and_check(root, caplog)
    assert len(run.warnings) == 1, run.warnings
    assert str(broken) in run.warnings[0]
    assert "rebuilding" in run.warnings[0]
    assert not marker.exists(), "code planted in the cache was executed"
    assert run.deltas.get("num_cache_faults") == 1
    assert run.deltas.get("num_inductor_compiles", 0) == compiles
    assert run.deltas.get("num_compiled_artifacts_saved", 0) == compiles
    assert run.deltas.get("num_cache_hits", 0) == ARTIFACTS - compiles
    (result,) = run.backend.compiled
    assert result.warm is False
    # Whatever was broken, the stitching source that runs is the one emitted for
    # this graph, and the entry on disk holds it again.
    assert result.code == populated.code
    assert (entry / SOURCE_FILE).read_text() == populated.code
    assert run.backend.fns[0].__code__.co_filename == source_filename(populated.code)

    # The rebuilt entry is whole: the next compile is warm and quiet.
    again = compile_and_check(root, caplog)
    assert again.warnings == []
    assert again.deltas.get("num_inductor_compiles", 0) == 0
    assert again.deltas.get("num_cache_hits") == ARTIFACTS
    assert again.backend.compiled[0].warm is True


def test_populated_entry_loads_warm_in_process(
    populated: Populated, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The control for the fault cases: an untouched copy needs no compile.
    root = tmp_path / "cache"
    shutil.copytree(populated.root, root)
    run = compile_and_check(root, caplog)
    assert run.warnings == []
    assert run.deltas.get("num_inductor_compiles", 0) == 0
    assert run.deltas.get("num_cache_hits") == ARTIFACTS
    assert run.backend.compiled[0].warm is True


# -- concurrency -------------------------------------------------------------------------


def test_two_processes_compile_into_one_empty_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "cache"
    go = tmp_path / "go"
    procs = []
    for i in range(2):
        spec = {
            "cache_dir": str(root),
            "config": CONFIG,
            "sizes": list(RUN_SIZES),
            "ready_file": str(tmp_path / f"ready{i}"),
            "go_file": str(go),
        }
        procs.append(
            subprocess.Popen(
                worker_command(spec),
                env=worker_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        # Both have imported torch and built the model: start them together.
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert all(p.poll() is None for p in procs), "a worker died before starting"
            assert time.monotonic() < deadline, "workers never got ready"
            time.sleep(0.05)
        go.write_text("go")
        reports = [parse_worker(p.wait(timeout=300), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    for report in reports:
        assert report["warnings"] == []
        assert max(report["diffs"].values()) < INDUCTOR_TOL["atol"], report["diffs"]
        assert report["counter"].get("num_cache_faults", 0) == 0
    # Both compiled the same entry; the files the two processes wrote agree.
    (entry,) = {r["compiled"][0]["cache_dir"] for r in reports}
    assert [p.name for p in Path(entry).iterdir() if p.name.startswith(".tmp-")] == []
    assert [
        p.name
        for p in (Path(entry) / "artifacts").iterdir()
        if p.name.startswith(".tmp-")
    ] == []
    assert len(os.listdir(Path(entry) / "artifacts")) == ARTIFACTS

    run = compile_and_check(root, caplog)
    assert run.warnings == []
    assert run.deltas.get("num_inductor_compiles", 0) == 0
    assert run.deltas.get("num_cache_hits") == ARTIFACTS
    assert run.backend.compiled[0].warm is True
