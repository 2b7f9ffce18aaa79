"""A warm load that fails at any step costs a compile, never the process.

NOTE: [a warm load that fails compiles instead] (runtime/pipeline/warm_load.py).
A populated entry whose compile added a guard (``SpecializeOnLength`` asks
whether the token count is 7: ``Ne(s, 7)``) is loaded again with one step of
the warm load made to raise what no check foresaw: decoding a recorded guard,
installing it, reading the stitching source, loading a piece, loading its
prebuilt record.  Each run must warn once (naming the entry, what failed and
why), compute what eager computes with pieces compiled anew, leave the entry
as it was (the next run starts warm from it, quietly), and ``stitch cache
explain`` must say what the warning said.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest
import torch

from stitch.runtime import CompilationConfig
from stitch.runtime.cli.cache_cmd import run_explain
from stitch.runtime.compat import shapes
from stitch.runtime.pipeline import entry as entry_module
from stitch.runtime.pipeline.prebuilt import load as prebuilt_load
from stitch.runtime.store import codec
from stitch.runtime.store.cache import CompileCache
from stitch.runtime.store.digests import content_hash
from stitch.runtime.store.index import INDEX_FILE, SOURCE_FILE, Index
from stitch.runtime.store.load_failures import read_failures
from stitch.runtime.store.location import LOAD_FAILURES_FILE, LOCK_FILE

from backend_support import (
    INDUCTOR_TOL,
    TINY,
    SpecializeOnLength,
    compile_model,
    counting,
    eager_and_compiled,
    model_for,
    stitch_warnings,
)
from cache_support import tree_state

# Every test starts from an entry that Inductor's compiles filled.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("dynamo_state")]

SIZES = (8, 20)
PIECES = 3  # compiled pieces of the tiny model, each for its general shape


def injected(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("injected fault")


# step -> (what to patch, its attribute, what the warning names, what it does next)
STEPS = {
    "guards decode": (shapes, "read_guard", "guard Ne(", "next entry of its chain"),
    "guards install": (entry_module, "install_guard", "guard Ne(", "without the cache"),
    "source": (CompileCache, "read_source", "execution_fn.py", "without the cache"),
    "pieces": (CompileCache, "lookup", "piece submod_", "without the cache"),
    "prebuilt records": (
        prebuilt_load,
        "load_prebuilt",
        "prebuilt",
        "without the cache",
    ),
}


def run(
    root: Path, caplog: pytest.LogCaptureFixture
) -> tuple[Any, dict[str, int], list[str]]:
    """Compile the tiny model with ``root`` and check every size against eager;
    its pieces compile in the backend call (``tiered_start=False``: the tests
    count compiles and read the entry)."""
    caplog.clear()
    model = model_for(TINY)
    config = CompilationConfig(
        cache_dir=str(root), inductor_passes=[SpecializeOnLength()], tiered_start=False
    )
    backend, fn = compile_model(model, config)
    with caplog.at_level(logging.WARNING, logger="stitch"), counting() as deltas:
        for n in SIZES:
            ref, out = eager_and_compiled(model, fn, TINY, n)
            torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    assert len(backend.compiled) == 1
    return backend.compiled[0], deltas, stitch_warnings(caplog)


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("populated")
    compiled, deltas, _ = run(root, _NoCaplog())  # type: ignore[arg-type]
    assert deltas["num_inductor_compiles"] == PIECES
    entry = Path(compiled.cache_dir)
    assert compiled.guards, "the pass added no guard"
    return root, entry.relative_to(root)


class _NoCaplog:
    """What :func:`run` asks of caplog, for the module fixture (no warnings read)."""

    records: list[Any] = []

    def clear(self) -> None:
        pass

    def at_level(self, *args: Any, **kwargs: Any) -> Any:
        return contextlib.nullcontext()


def entry_state(entry: Path) -> dict[str, Any]:
    """The entry's files, but for the record of failed loads (and the folder and
    lock file that recording it touches)."""
    state = tree_state(entry)
    for name in (".", LOAD_FAILURES_FILE, LOCK_FILE):
        state.pop(name, None)
    return state


@pytest.mark.parametrize("step", list(STEPS))
def test_a_failing_warm_load_step_compiles_instead(
    step: str,
    populated: tuple[Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner, attribute, what, then = STEPS[step]
    root = tmp_path / "cache"
    shutil.copytree(populated[0], root)
    entry = root / populated[1]
    before = entry_state(entry)

    with monkeypatch.context() as patch:
        patch.setattr(owner, attribute, injected)
        compiled, deltas, warnings = run(root, caplog)
    assert len(warnings) == 1, warnings
    (warning,) = warnings
    assert str(entry) in warning and what in warning, warning
    assert "RuntimeError: injected fault" in warning and then in warning
    assert deltas.get("num_warm_load_failures") == 1
    # Compiled anew, not loaded: every piece went through Inductor.
    assert deltas.get("num_inductor_compiles") == PIECES
    assert compiled.warm is False and "injected fault" in compiled.why_cold

    # The entry is as it was: the next run starts warm from it, quietly.
    assert entry_state(entry) == before
    again, deltas, warnings = run(root, caplog)
    assert warnings == []
    assert again.warm is True and again.cache_dir == str(entry)
    assert deltas.get("num_inductor_compiles", 0) == 0

    # stitch cache explain says what the warning said.
    (failure,) = read_failures(str(entry))
    assert failure.what in warning and failure.why in warning
    out = io.StringIO()
    args = argparse.Namespace(entry=str(entry), other=None)
    run_explain(args, out)
    assert f"at its {failure.step} ({failure.what}): {failure.why}" in out.getvalue()


def test_cached_source_that_fails_to_run_compiles_instead(
    populated: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Source that reads back as recorded (its sha256 is the index's) but whose
    top level raises when run: the warm load's source step failed, so the call
    compiles without the cache instead of crashing (NOTE: [running cached
    source is a step of its warm load], runtime/pipeline/materialize.py)."""
    root = tmp_path / "cache"
    shutil.copytree(populated[0], root)
    entry = root / populated[1]
    source = entry / SOURCE_FILE
    broken = source.read_text() + "\nname_this_process_lacks\n"
    source.write_text(broken)
    index = codec.read(Index, str(entry / INDEX_FILE))
    assert index.source is not None
    record = msgspec.structs.replace(index.source, sha256=content_hash(broken.encode()))
    (entry / INDEX_FILE).write_text(
        msgspec.structs.replace(index, source=record).render()
    )

    compiled, deltas, warnings = run(root, caplog)  # numerics checked by run
    (warning,) = warnings
    assert f"{entry}: a warm load failed at its source ({SOURCE_FILE})" in warning
    assert "NameError" in warning and "name_this_process_lacks" in warning
    assert "this call compiles without the cache" in warning
    assert deltas.get("num_warm_load_failures") == 1
    assert deltas.get("num_inductor_compiles") == PIECES
    assert compiled.warm is False and "NameError" in compiled.why_cold
    (failure,) = read_failures(str(entry))
    assert (failure.step, failure.what) == ("source", SOURCE_FILE)
