"""The persistent compile cache: faults it survives, what a warm run writes, ``stitch inspect``.

Each fault is injected into a copy of a populated cache entry.  The next compile
must log exactly one warning naming the broken file (and field), rebuild what
that file held and nothing else, give correct results, and leave an entry that
the compile after it loads warm with no warning, and that ``stitch inspect``
finds healthy.  Faults of the index's types alone are in test_cache_index.py
(eager, no artifacts needed); unwritable locations and trust in
test_cache_locations.py; killed and concurrent processes in
test_cache_processes.py.
"""

from __future__ import annotations

import ast
import dataclasses
import errno
import io
import logging
import pprint
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import torch

from stitch.core.errors import StitchCacheError
from stitch.runtime import CompilationConfig
from stitch.runtime.cli.inspect_job import inspect_cache
from stitch.runtime.pipeline.saved_function import load_entry
from stitch.runtime.store.artifacts import (
    ARTIFACT_FILE,
    IDENTITY_FILE,
    ArtifactIdentity,
)
from stitch.runtime.store.cache import INDEX_FILE, SOURCE_FILE

from backend_support import (
    INDUCTOR_TOL,
    TINY,
    compile_model,
    counting,
    eager_and_compiled,
    model_for,
    stitch_warnings,
)
from cache_support import failing_writes, tree_state

# Every test starts from a cache entry that Inductor's compiles filled.
# See NOTE: [many compiles of one forward] in conftest.py.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("dynamo_state")]

# Three compiled pieces, each for its general shape and size 4: six artifacts,
# compiled in the backend call (the tests count them: tiered_start=False).
CONFIG = {"compile_sizes": [4], "max_num_batched_tokens": 32, "tiered_start": False}
ARTIFACTS = 3 * 2
RUN_SIZES = (8, 4, 20)


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


@pytest.fixture
def copy(populated: Populated, tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """A fresh copy of the populated cache: (root, entry folder, its index)."""
    root = tmp_path / "cache"
    shutil.copytree(populated.root, root)
    return root, root / populated.entry, ast.literal_eval(repr(populated.index))


def key_of(index: dict[str, Any], piece: str, target: str) -> str:
    (entry,) = [e for e in index["pieces"][piece]["entries"] if e["target"] == target]
    return entry["key"]


def write_index(path: Path, index: dict[str, Any]) -> None:
    path.write_text(pprint.pformat(index, sort_dicts=True) + "\n")


def edit_identity(folder: Path, *, recheck: bool, **changes: Any) -> None:
    """Change fields of an artifact's identity, with its checksum redone or left stale."""
    path = folder / IDENTITY_FILE
    if recheck:
        identity = ArtifactIdentity.parse(path.read_text())
        path.write_text(msgspec.structs.replace(identity, **changes).render())
    else:
        data = ast.literal_eval(path.read_text())
        path.write_text(pprint.pformat({**data, **changes}) + "\n")


def inspect(root: Path) -> tuple[int, str]:
    out = io.StringIO()
    status = inspect_cache(str(root), out)
    return status, out.getvalue()


# -- faults ------------------------------------------------------------------------------
# Each injector breaks the entry at ``entry`` and returns the path the warning
# must name.  ``marker`` is a file that must never come to exist: code planted
# in the cache writes it if the cache ever executes that code.

BROKEN = ("submod_2", "size4")
OTHER = ("submod_4", "size4")


def code_in_index(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    # Valid Python, but not a literal: reading it must not run it.
    path = entry / INDEX_FILE
    path.write_text(f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')\n")
    return path


def size_index_changed(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    # Hashes intact, but the piece would read its runtime size from argument 0.
    index["pieces"]["submod_2"]["size_index"] = 0
    write_index(entry / INDEX_FILE, index)
    return entry / INDEX_FILE


def key_of_another_piece(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    for record in index["pieces"][BROKEN[0]]["entries"]:
        if record["target"] == BROKEN[1]:
            record["key"] = key_of(index, *OTHER)
    write_index(entry / INDEX_FILE, index)
    return entry / INDEX_FILE


def remove_artifact(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    path = entry / "artifacts" / key_of(index, *BROKEN)
    shutil.rmtree(path)
    return path


def corrupt_artifact(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    path = entry / "artifacts" / key_of(index, *BROKEN) / ARTIFACT_FILE
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))
    return path


def unloadable_artifact(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    # Garbage whose sha256 its identity agrees with: only loading can tell.
    import hashlib

    folder = entry / "artifacts" / key_of(index, *BROKEN)
    garbage = b"not an Inductor artifact\n" * 64
    (folder / ARTIFACT_FILE).write_bytes(garbage)
    edit_identity(folder, recheck=True, sha256=hashlib.sha256(garbage).hexdigest())
    return folder / ARTIFACT_FILE


def identity_edited(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    # The output unwrapping flipped by hand: the record's checksum no longer fits.
    folder = entry / "artifacts" / key_of(index, *BROKEN)
    unwrap = ast.literal_eval((folder / IDENTITY_FILE).read_text())["unwrap"]
    edit_identity(folder, recheck=False, unwrap=not unwrap)
    return folder / IDENTITY_FILE


def artifact_of_another_piece(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    # A whole, self-consistent artifact folder, but compiled for another piece.
    folder = entry / "artifacts" / key_of(index, *BROKEN)
    shutil.rmtree(folder)
    shutil.copytree(entry / "artifacts" / key_of(index, *OTHER), folder)
    return folder / IDENTITY_FILE


def file_in_place_of_artifact(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    path = entry / "artifacts" / key_of(index, *BROKEN)
    shutil.rmtree(path)
    path.write_text("a file where the artifact's folder belongs\n")
    return path


def tamper_source(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    path = entry / SOURCE_FILE
    path.write_text(
        f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')\n"
        "def execution_fn(*args, __vllm_submods__, __vllm_dispatch__=None):\n"
        "    raise RuntimeError('tampered execution_fn.py ran')\n"
    )
    return path


Injector = Callable[[Path, dict[str, Any], Path], Path]

# fault -> (injector, what the warning says, Inductor compiles the rebuild takes).
# Artifacts are found by compile key and checked by their identity, so a lost
# or wrong index record costs no compile: only a broken artifact is compiled again.
FAULTS: dict[str, tuple[Injector, str, int]] = {
    "index-not-a-literal": (code_in_index, "is not a Python literal", 0),
    "index-sym-index-changed": (
        size_index_changed,
        "field pieces['submod_2'].size_index",
        0,
    ),
    "index-key-of-another-piece": (
        key_of_another_piece,
        "field pieces['submod_2'].entries[1].key points at",
        0,
    ),
    "artifact-missing": (remove_artifact, "is missing", 1),
    "artifact-corrupted": (corrupt_artifact, "field sha256", 1),
    "artifact-fails-to-load": (unloadable_artifact, "failed to load", 1),
    "artifact-identity-edited": (identity_edited, "field check", 1),
    "artifact-of-another-piece": (artifact_of_another_piece, "field key", 1),
    "artifact-folder-is-a-file": (file_in_place_of_artifact, "is not a folder", 1),
    "source-tampered": (tamper_source, "does not match the index", 0),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_cache_fault_is_survived_with_one_warning(
    fault: str,
    populated: Populated,
    copy: tuple[Path, Path, dict[str, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    inject, says, compiles = FAULTS[fault]
    root, entry, index = copy
    marker = tmp_path / "planted-code-ran"
    broken = inject(entry, index, marker)

    run = compile_and_check(root, caplog)
    assert len(run.warnings) == 1, run.warnings
    assert str(broken) in run.warnings[0]
    assert says in run.warnings[0]
    assert "rebuilding" in run.warnings[0]
    assert not marker.exists(), "code planted in the cache was executed"
    assert run.deltas.get("num_cache_faults") == 1
    assert run.deltas.get("num_inductor_compiles", 0) == compiles
    assert run.deltas.get("num_compiled_artifacts_saved", 0) == compiles
    assert run.deltas.get("num_cache_hits", 0) == ARTIFACTS - compiles
    (result,) = run.backend.compiled
    # Whatever was broken, the stitching source that runs is the one emitted for
    # this graph, and the entry on disk holds it again.
    assert result.code == populated.code
    assert (entry / SOURCE_FILE).read_text() == populated.code
    # Tracebacks read the emitted lines from the cache's own file.
    assert run.backend.fns[0].__code__.co_filename == str(entry / SOURCE_FILE)

    # The rebuilt entry is whole: the next compile is warm and quiet, and
    # inspect finds nothing left over (no stale record, staging or trash folder).
    again = compile_and_check(root, caplog)
    assert again.warnings == []
    assert again.deltas.get("num_inductor_compiles", 0) == 0
    assert again.deltas.get("num_cache_hits") == ARTIFACTS
    assert again.backend.compiled[0].warm is True
    status, text = inspect(root)
    assert status == 0, text


def test_warm_run_writes_nothing(
    copy: tuple[Path, Path, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    root, _, _ = copy
    before = tree_state(root)
    run = compile_and_check(root, caplog)
    assert run.warnings == []
    assert run.deltas.get("num_inductor_compiles", 0) == 0
    assert run.deltas.get("num_cache_hits") == ARTIFACTS
    assert run.backend.compiled[0].warm is True
    assert tree_state(root) == before


def test_read_only_cache_starts_warm_without_a_warning(
    copy: tuple[Path, Path, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    root, _, _ = copy
    with failing_writes(root, errno.EROFS) as refused:
        run = compile_and_check(root, caplog)
    assert run.warnings == []
    assert refused == []  # nothing was even tried
    assert run.deltas.get("num_inductor_compiles", 0) == 0
    assert run.backend.compiled[0].warm is True


# -- stitch inspect ------------------------------------------------------------------


def test_inspect_finds_a_populated_entry_healthy(
    copy: tuple[Path, Path, dict[str, Any]],
) -> None:
    root, _, _ = copy
    status, text = inspect(root)
    assert status == 0, text
    assert "health: ok" in text
    assert "compiled pieces: 3" in text
    assert "unique artifacts: 6" in text


def orphan_file(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    path = entry / "artifacts" / "0123456789abcdef01234567"
    path.mkdir()
    return path


def staging_left_by_a_killed_run(
    entry: Path, index: dict[str, Any], marker: Path
) -> Path:
    path = entry / "artifacts" / ".staging-x1y2z3"
    path.mkdir()
    (path / ARTIFACT_FILE).write_bytes(b"half")
    return path


def piece_of_wrong_type(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    index["pieces"]["submod_2"] = 5
    write_index(entry / INDEX_FILE, index)
    return entry / INDEX_FILE


# fault -> (injector, what inspect reports)
INSPECTED: dict[str, tuple[Injector, str]] = {
    "source-tampered": (tamper_source, "the stitching source was changed"),
    "artifact-corrupted": (corrupt_artifact, "field sha256"),
    "artifact-identity-edited": (identity_edited, "field check"),
    "artifact-of-another-piece": (artifact_of_another_piece, "field key"),
    "artifact-missing": (remove_artifact, "is missing"),
    "artifact-folder-is-a-file": (file_in_place_of_artifact, "is not a folder"),
    "index-record-of-wrong-type": (
        piece_of_wrong_type,
        "field pieces['submod_2']: expected object, got int (5)",
    ),
    "index-not-a-literal": (code_in_index, "is not a Python literal"),
    "orphaned-artifact": (orphan_file, "is orphaned"),
    "staging-left-over": (staging_left_by_a_killed_run, "is orphaned"),
}


@pytest.mark.parametrize("fault", list(INSPECTED))
def test_inspect_reports_the_fault_and_fails(
    fault: str, copy: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    inject, says = INSPECTED[fault]
    root, entry, index = copy
    marker = tmp_path / "planted-code-ran"
    broken = inject(entry, index, marker)
    status, text = inspect(root)
    assert status == 1, text
    problems = [line for line in text.splitlines() if line.startswith("    - ")]
    assert any(str(broken) in p and says in p for p in problems), text
    assert "1 of 1 entries unhealthy" in text
    assert "could not be inspected" not in text
    assert not marker.exists()


def config_hash_edited(entry: Path, index: dict[str, Any], marker: Path) -> Path:
    # Self-consistent, but saved under another config.
    folder = entry / "artifacts" / key_of(index, *BROKEN)
    edit_identity(folder, recheck=True, config_hash="f" * 64)
    return folder / IDENTITY_FILE


@pytest.mark.parametrize(
    "inject, says",
    [
        (artifact_of_another_piece, "field key"),
        (config_hash_edited, "field config_hash"),
    ],
)
def test_a_saved_forward_checks_each_artifact_as_a_warm_start_does(
    inject: Injector,
    says: str,
    copy: tuple[Path, Path, dict[str, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A saved forward rebuilds its pieces from the index, without the graph:
    # every artifact is still checked by the store's one identity check
    # (CompileCache.lookup), all but the piece's hash, which needs the graph.
    # The error names the broken file and field; the load warns about nothing
    # (NOTE: [a broken entry is reported once, by the run that rebuilds it]).
    root, entry, index = copy
    broken = inject(entry, index, tmp_path / "planted-code-ran")
    piece, target = BROKEN
    with caplog.at_level(logging.WARNING, logger="stitch"):
        with pytest.raises(StitchCacheError, match=rf"piece {piece} \({target}\)") as e:
            load_entry(str(root), str(entry), CompilationConfig(**CONFIG), [])
    assert str(broken) in str(e.value) and says in str(e.value), str(e.value)
    assert stitch_warnings(caplog) == []


def test_a_saved_forward_refuses_an_entry_compiled_for_other_targets(
    copy: tuple[Path, Path, dict[str, Any]],
) -> None:
    # The index records size 4; a saved reference whose targets have no size 4
    # does not describe this entry: materialize names the piece and target.
    root, entry, _ = copy
    config = CompilationConfig(**{**CONFIG, "compile_sizes": []})
    with pytest.raises(
        StitchCacheError, match=r"piece submod_\d+: target 'size4' is not one of"
    ):
        load_entry(str(root), str(entry), config, [])
