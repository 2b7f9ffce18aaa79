"""Where the cache lives: unwritable locations, trust, and pieces that cannot be saved.

An unwritable location (read-only, a file, a full disk) is one warning naming
the path and the reason; the run compiles in memory and gives correct results.
A cache folder another user could write is refused with an error that says
how to fix it.  An artifact the compiler cannot save is recorded as such, so
later runs compile it quietly instead of warning about a broken record.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import torch

from stitch.core.errors import StitchCacheError
from stitch.runtime import CompilationConfig
from stitch.runtime.cli import main
from stitch.runtime.cli.inspect_job import inspect_cache
from stitch.runtime.pipeline.compilers import InductorAdapter
from stitch.runtime.store.cache import INDEX_FILE
from stitch.runtime.store.trust import StitchCacheTrustError

from backend_support import (
    INDUCTOR_TOL,
    TINY,
    compile_model,
    counting,
    eager_and_compiled,
    model_for,
    stitch_warnings,
)
from cache_support import failing_writes

# See NOTE: [many compiles of one forward] in conftest.py.
pytestmark = pytest.mark.usefixtures("dynamo_state")

# One target per piece: three artifacts, the least Inductor work that has all
# kinds, compiled in the backend call (the tests count them: tiered_start=False).
INDUCTOR = {"max_num_batched_tokens": 32, "tiered_start": False}
ARTIFACTS = 3
EAGER = {"backend": "eager", "max_num_batched_tokens": 32}


def run(
    root: Path, fields: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> tuple[Any, dict[str, int], list[str]]:
    """Compile and run the tiny model (sizes 8 and 3) with cache root ``root``."""
    caplog.clear()
    model = model_for(TINY)
    be, fn = compile_model(model, CompilationConfig(cache_dir=str(root), **fields))
    with caplog.at_level(logging.WARNING, logger="stitch"), counting() as deltas:
        for n in (8, 3):
            ref, out = eager_and_compiled(model, fn, TINY, n)
            torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    return be, deltas, stitch_warnings(caplog)


def stitch_error(exc: BaseException) -> BaseException | None:
    """The Stitch error in the chain torch.compile wrapped it in."""
    error: BaseException | None = exc
    while error is not None and not isinstance(error, StitchCacheTrustError):
        error = error.__cause__ or error.__context__
    return error


# -- unwritable locations -------------------------------------------------------------


def test_read_only_location_compiles_in_memory_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    root = readonly / "cache"
    # Eager: the location is the point; Inductor's own failing save is in the next test.
    with failing_writes(readonly, errno.EROFS) as refused:
        be, _, warnings = run(root, EAGER, caplog)
    assert len(warnings) == 1, warnings
    assert str(root) in warnings[0] and "Read-only file system" in warnings[0]
    assert refused, "nothing tried to write"
    assert list(readonly.iterdir()) == []
    assert be.compiled[0].cache_dir is None


@pytest.mark.slow
def test_full_disk_mid_run_keeps_what_was_saved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "cache"
    # The first piece's artifact, its identity and the index record fit; the
    # second piece's artifact does not.
    with failing_writes(root, errno.ENOSPC, after=3):
        _, deltas, warnings = run(root, INDUCTOR, caplog)
    assert len(warnings) == 1, warnings
    assert str(root) in warnings[0] and "No space left on device" in warnings[0]
    assert deltas["num_inductor_compiles"] == ARTIFACTS
    leftovers = [
        p for p in root.rglob("*") if p.name.startswith((".tmp", ".staging", ".trash"))
    ]
    assert leftovers == []

    # With room again, only what was not saved is compiled, quietly.
    _, deltas, warnings = run(root, INDUCTOR, caplog)
    assert warnings == []
    assert deltas["num_inductor_compiles"] == ARTIFACTS - 1
    assert deltas["num_cache_hits"] == 1
    _, deltas, warnings = run(root, INDUCTOR, caplog)
    assert warnings == [] and deltas.get("num_inductor_compiles", 0) == 0


def test_cache_dir_that_is_a_file_is_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file\n")
    be, _, warnings = run(not_a_folder, EAGER, caplog)
    assert len(warnings) == 1, warnings
    assert str(not_a_folder) in warnings[0] and "Not a directory" in warnings[0]
    assert (
        be.compiled[0].cache_dir is None
    )  # nothing cached: `stitch run` prints no path
    assert not_a_folder.read_text() == "a file\n"


# -- trust ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eager_populated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eager") / "cache"
    old_umask = os.umask(0)  # the cache's modes must not depend on the umask
    try:
        model = model_for(TINY)
        be, fn = compile_model(model, CompilationConfig(cache_dir=str(root), **EAGER))
        eager_and_compiled(model, fn, TINY, 8)
    finally:
        os.umask(old_umask)
    return root, Path(be.compiled[0].cache_dir).relative_to(root)


@pytest.fixture
def eager_cache(
    eager_populated: tuple[Path, Path], tmp_path: Path
) -> tuple[Path, Path]:
    """A copy of a cache root with one eager entry: (root, entry folder)."""
    root = tmp_path / "cache"
    shutil.copytree(eager_populated[0], root)
    return root, root / eager_populated[1]


def test_new_cache_folders_and_files_are_private(
    eager_cache: tuple[Path, Path],
) -> None:
    root, _ = eager_cache
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


@pytest.mark.parametrize("where", ["root", "index"])
def test_cache_writable_by_others_is_refused_with_the_fix(
    where: str, eager_cache: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    root, entry = eager_cache
    loose = root if where == "root" else entry / INDEX_FILE
    loose.chmod(0o777 if where == "root" else 0o664)
    with pytest.raises(Exception) as info:
        run(root, EAGER, caplog)
    error = stitch_error(info.value)
    assert error is not None, info.value
    assert str(loose) in str(error)
    assert "writable by its group" in str(error)
    assert f"chmod -R go-w {root}" in str(error)

    out = io.StringIO()
    assert inspect_cache(str(root), out) == 1
    assert "refused by the backend" in out.getvalue()

    loose.chmod(0o700 if where == "root" else 0o600)  # the fix the error names
    _, _, warnings = run(root, EAGER, caplog)
    assert warnings == []


def test_cache_owned_by_another_user_is_refused(
    eager_cache: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, _ = eager_cache
    if os.geteuid() == 0:
        os.chown(root, 4242, 4242)
        owner = "uid 4242"
    else:  # pragma: no cover - CI runs as root; elsewhere, pretend to be someone else
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)
        owner = ""
    with pytest.raises(Exception) as info:
        run(root, EAGER, caplog)
    error = stitch_error(info.value)
    assert error is not None, info.value
    assert f"{root} is owned by {owner}" in str(error)
    assert "use a cache folder of your own" in str(error)


def test_stitch_run_prints_the_trust_error_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    status = main(
        [
            "run",
            "--example",
            "two_layer",
            "--backend",
            "eager",
            "--sizes",
            "3",
            "--cache-dir",
            str(shared),
            "--dump",
            str(tmp_path / "dump"),
        ]
    )
    _, err = capsys.readouterr()
    assert status == 1
    assert err.startswith("stitch run: error: refusing to use the Stitch cache: ")
    assert "chmod -R go-w" in err and "Traceback" not in err
    assert list(shared.iterdir()) == []  # nothing written there either


# -- pieces that cannot be saved -----------------------------------------------------------


@pytest.mark.slow
def test_a_piece_that_cannot_be_saved_is_recorded_not_warned_about_forever(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when a piece compiled with gradients enabled cannot be serialized: the
    # compiler's save fails for a reason that is not the disk.
    real_save = InductorAdapter.save
    calls: list[str] = []

    def save(self: InductorAdapter, handle: Any, path: str) -> None:
        calls.append(path)
        if len(calls) == 2:
            try:
                raise RuntimeError("cannot pickle a graph that requires grad")
            except RuntimeError as exc:
                raise StitchCacheError(
                    f"could not save artifact {path}: {exc}"
                ) from exc
        real_save(self, handle, path)

    monkeypatch.setattr(InductorAdapter, "save", save)
    root = tmp_path / "cache"
    _, deltas, warnings = run(root, INDUCTOR, caplog)
    assert len(warnings) == 1, warnings
    assert "cannot be cached" in warnings[0] and "requires grad" in warnings[0]

    _, deltas, warnings = run(root, INDUCTOR, caplog)
    assert warnings == []
    assert deltas["num_inductor_compiles"] == 1
    assert deltas["num_cache_hits"] == ARTIFACTS - 1
    assert len(calls) == ARTIFACTS  # never tried to save it again
    out = io.StringIO()
    assert inspect_cache(str(root), out) == 0, out.getvalue()
    assert "not cached (the compiler could not save it" in out.getvalue()


# -- ranks of one engine share a folder ---------------------------------------------


def test_ranks_of_one_group_share_one_folder_with_a_rank_folder_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # NOTE: [ranks of one engine share a folder]: the ranks of a tensor-parallel
    # engine trace different graphs; an integration names what they share as
    # the group, and one model's cache is one folder, rank_<r> below it.
    from stitch.runtime.pipeline.backend import StitchBackend

    config = CompilationConfig(cache_dir=str(tmp_path), **INDUCTOR)
    graphs = {0: TINY, 1: dataclasses.replace(TINY, intermediate_size=96)}

    def compile_on(rank: int, group: str) -> tuple[StitchBackend, dict[str, int]]:
        monkeypatch.setenv("RANK", str(rank))
        model = model_for(graphs[rank])
        backend = StitchBackend(config, cache_group=group)
        fn = torch.compile(model, backend=backend, fullgraph=True)
        with counting() as deltas:
            ref, out = eager_and_compiled(model, fn, graphs[rank], 8)
        torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
        torch._dynamo.reset()
        return backend, deltas

    folders = {}
    for rank in (0, 1):
        backend, deltas = compile_on(rank, "engine-a")
        assert deltas["num_compiled_artifacts_saved"] == ARTIFACTS
        folders[rank] = Path(backend.compiled[-1].cache_dir)
    assert [folders[r].name for r in (0, 1)] == ["rank_0", "rank_1"]
    assert folders[0].parent == folders[1].parent
    assert [p.name for p in tmp_path.iterdir()] == [folders[0].parent.name]
    # Each rank starts warm from its own folder.
    for rank in (0, 1):
        backend, deltas = compile_on(rank, "engine-a")
        assert deltas.get("num_inductor_compiles", 0) == 0, deltas
        assert Path(backend.compiled[-1].cache_dir) == folders[rank]
    # stitch inspect finds both ranks' entries healthy, each under the one folder.
    out = io.StringIO()
    assert inspect_cache(str(tmp_path), out) == 0, out.getvalue()
    assert out.getvalue().count("health: ok") == 2
    assert out.getvalue().count("group: engine-a") == 2
    assert str(folders[0]) in out.getvalue() and str(folders[1]) in out.getvalue()
    # Without a group, each graph has a folder of its own, as before.
    backend, _ = compile_on(1, "")
    assert Path(backend.compiled[-1].cache_dir).parent != folders[1].parent
    # Another graph under the same group and rank (the model changed) does not
    # use the old entry: it is rebuilt in place, with one warning naming it.
    graphs[1] = dataclasses.replace(TINY, intermediate_size=80)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stitch"):
        backend, deltas = compile_on(1, "engine-a")
    # (The first piece, embedding and the first attention's inputs, is the
    # same graph as before: its artifact is found by its compile key.)
    assert deltas["num_inductor_compiles"] == ARTIFACTS - 1
    assert Path(backend.compiled[-1].cache_dir) == folders[1]
    warned = stitch_warnings(caplog)
    assert len(warned) == 1 and "graph_key" in warned[0], warned


def test_a_forward_that_cannot_be_saved_names_the_real_cause() -> None:
    # An entry folder that could not be written is not "disable_cache=True":
    # the message never blames a setting the user did not make.
    from stitch.runtime.pipeline.saved_function import saveable

    unwritable = saveable(len, CompilationConfig(), None, [], None)
    assert unwritable.reference is None
    assert "could not be written" in unwritable.unsaveable
    assert "disable_cache" not in unwritable.unsaveable
    disabled = saveable(len, CompilationConfig(disable_cache=True), None, [], None)
    assert disabled.unsaveable == "the cache is disabled (disable_cache=True)"
