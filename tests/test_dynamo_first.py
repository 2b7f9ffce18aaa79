"""A cold tiered call serves Dynamo's graph while a thread builds its
stitching (NOTE: [Dynamo's graph serves while the stitching is built],
runtime/pipeline/tiered/dynamo_first.py)."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from test_tiered import SWAP_WAIT_S, _fresh_dynamo, tiered  # noqa: F401

from stitch.core import StitchRuntimeError
from stitch.runtime.pipeline.compilation import Compilation
from stitch.runtime.pipeline.tiered.dynamo_first import DynamoFirst

from backend_support import (
    INDUCTOR_TOL,
    TINY,
    compile_model,
    eager_and_compiled,
    model_for,
    stitch_warnings,
)

pytestmark = pytest.mark.slow


def split_then(monkeypatch: pytest.MonkeyPatch, before: Any) -> list[str]:
    """Compilation.split runs ``before(compilation)`` first; the names of the
    threads it ran on."""
    split = Compilation.split
    threads: list[str] = []

    def patched(self: Compilation) -> Any:
        threads.append(threading.current_thread().name)
        before(self)
        return split(self)

    monkeypatch.setattr(Compilation, "split", patched)
    return threads


def test_the_first_forwards_run_dynamos_graph_before_the_stitching_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    threads = split_then(monkeypatch, lambda _: release.wait(SWAP_WAIT_S))
    model = model_for()
    backend, fn = compile_model(model, tiered(tmp_path))
    # Both forwards end while the split is held: they waited for none of it.
    for n in (5, 3):
        ref, out = eager_and_compiled(model, fn, TINY, n)
        torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    (first,) = backend.fns
    assert isinstance(first, DynamoFirst) and not first.stitched
    release.set()
    compiled = backend.compiled[-1]  # waits for the build
    assert threads == ["stitch-build"]
    assert compiled.tier is not None and not compiled.warm
    ref, out = eager_and_compiled(model, fn, TINY, 4)
    torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    assert first.stitched
    assert backend.wait_compiled(SWAP_WAIT_S), compiled.tier.timeline()
    for n in (2, 6):
        ref, out = eager_and_compiled(model, fn, TINY, n)
        torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    assert not compiled.tier.timeline()["uncompiled"], compiled.tier.timeline()


def add_a_size_guard(compilation: Compilation) -> None:
    """Guard on the token count, as a build that specialized it would."""
    for fake in compilation.fakes:
        sizes = [s for s in getattr(fake, "shape", ()) if isinstance(s, torch.SymInt)]
        if sizes:
            assert bool(sizes[0] > 3)
            return
    raise AssertionError("no symbolic size among the fake inputs")


def test_a_build_that_adds_a_guard_keeps_running_dynamos_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    split_then(monkeypatch, add_a_size_guard)
    model = model_for()
    backend, fn = compile_model(model, tiered(tmp_path))
    caplog.set_level("WARNING", logger="stitch")
    ref, out = eager_and_compiled(model, fn, TINY, 5)
    torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    compiled = backend.compiled[-1]
    (first,) = backend.fns
    warnings = stitch_warnings(caplog)
    (warning,) = [w for w in warnings if "keeps running Dynamo's graph" in w]
    assert re.search(r"1 guard\(s\) .*\(s\d+ > 3\)", warning), warning
    # 2 tokens fail the added guard, which Dynamo does not check: the graph
    # Dynamo traced serves them, as it serves every size.
    for n in (2, 7):
        ref, out = eager_and_compiled(model, fn, TINY, n)
        torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    assert not first.stitched
    assert backend.wait_compiled(SWAP_WAIT_S), compiled.tier.timeline()


def test_a_build_that_fails_raises_at_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(_: Compilation) -> None:
        raise StitchRuntimeError("the split failed here")

    split_then(monkeypatch, fail)
    model = model_for()
    backend, fn = compile_model(model, tiered(tmp_path))
    ref, out = eager_and_compiled(model, fn, TINY, 5)
    torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    assert backend.compiled == []  # waits for the build, which failed
    for _ in range(2):
        with pytest.raises(StitchRuntimeError, match="the split failed here"):
            eager_and_compiled(model, fn, TINY, 5)
