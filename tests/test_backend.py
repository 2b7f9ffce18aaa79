"""The torch.compile backend end to end: numerics, compile counts, dedup, dispatch.

Every model here is the built-in llama-like decoder at hidden size 64.  Results
are compared with the same model run eagerly from zeroed KV caches.

Batch size 1 and Dynamo: the token dimension is marked with ``mark_dynamic``, as
serving stacks do.  Dynamo's 0/1 specialization guards the dynamic graph with
``s >= 2``, so the first call at size 1 makes Dynamo trace a second, static graph
and call the backend again.  That is Dynamo's decision before any backend runs; a
backend cannot change the guards.  ``test_batch_size_one_*`` pin what happens
(one more backend call, general runnables only, correct results) and show the
way to avoid it: ``mark_unbacked`` keeps one graph for every size, 1 included.
"""

from __future__ import annotations

import ast
import importlib.metadata
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from stitch.runtime import CompilationConfig, StitchBackend, compilation_counter
from stitch.runtime.examples import LlamaConfig
from stitch.runtime.pipeline.piecewise import Target

from backend_support import (
    INDUCTOR_TOL,
    TINY,
    compile_model,
    counting,
    eager_and_compiled,
    model_for,
    stitch_warnings,
)

# See NOTE: [many compiles of one forward] in conftest.py.
pytestmark = pytest.mark.usefixtures("dynamo_state")

# compile_sizes=[4], one split point at 16, max 32: every piece with a runtime
# size has 4 targets: general, range [1, 16], range [17, 32], size 4.  The ranges
# share the general artifact (NOTE: [ranges share the general artifact]), so 2
# of them are compiled.
SIZES = [4]
SPLIT_POINTS = [16]
MAX_TOKENS = 32
COMPILED_TARGETS = 2
# The 2-layer model splits into 5 pieces: 3 compiled (embedding + layer 0 up to
# attention; layer 0 after attention + layer 1 up to attention; layer 1 after
# attention + final norm) and 2 attention pieces that stay eager.  The 3 compiled
# pieces differ in structure, and a deeper model adds only repeats of the middle one.
PIECES = 5
COMPILED_PIECES = 3
UNIQUE_PIECES = 3
# Every target a compiled piece of the dynamic graph has (see SIZES above).
TARGETS = {
    Target("general"),
    Target("range", 1, 16),
    Target("range", 17, 32),
    Target("size", 4, 4),
}


def small_config(
    tmp: Path | str, backend: str = "inductor", **fields: Any
) -> CompilationConfig:
    """The config of this module's tests, which check compile counts and
    compiled pieces: each piece compiles in the backend call
    (``tiered_start=False``)."""
    return CompilationConfig(
        backend=backend,
        cache_dir=str(tmp),
        tiered_start=False,
        compile_sizes=SIZES,
        compile_ranges_split_points=SPLIT_POINTS,
        max_num_batched_tokens=MAX_TOKENS,
        **fields,
    )


def assert_matches(backend: str, ref: torch.Tensor, out: torch.Tensor) -> None:
    if backend == "eager":
        # The eager backend runs Dynamo's aten graph piece by piece: the same ops
        # in the same order as eager mode, so the same bits.
        assert torch.equal(out, ref), (out - ref).abs().max()
    else:
        torch.testing.assert_close(out, ref, **INDUCTOR_TOL)


def compiled_pieces(result: Any) -> list[Any]:
    """The compiled pieces of one backend call of the 2-layer model.

    NOTE: [a loop over the pieces must run]
    The tests below check each piece in a loop; with no piece the loop would
    pass having checked nothing, so the count is checked first.
    """
    pieces = list(result.backends.values())
    assert len(pieces) == COMPILED_PIECES, sorted(result.backends)
    return pieces


class Compiled:
    """One compiled tiny model shared by a module's tests."""

    def __init__(self, backend_name: str, tmp: Path) -> None:
        self.name = backend_name
        self.model = model_for(TINY)
        self.backend, self.fn = compile_model(
            self.model, small_config(tmp, backend_name)
        )
        with counting() as self.first_deltas:
            self.first = eager_and_compiled(self.model, self.fn, TINY, 8)


@pytest.fixture(
    scope="module", params=[pytest.param("inductor", marks=pytest.mark.slow), "eager"]
)
def compiled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Compiled:
    return Compiled(request.param, tmp_path_factory.mktemp(f"cache-{request.param}"))


# -- compile counts ------------------------------------------------------------------


def test_first_call_compiles_each_unique_piece_once_per_target(
    compiled: Compiled,
) -> None:
    expected = {
        "num_graphs_seen": 1,
        "num_backend_compilations": 1,
        "num_piecewise_graphs_seen": PIECES,
        "num_piecewise_capturable_graphs_seen": COMPILED_PIECES,
    }
    if compiled.name == "inductor":
        n = UNIQUE_PIECES * COMPILED_TARGETS
        expected.update(
            num_inductor_compiles=n, num_cache_misses=n, num_compiled_artifacts_saved=n
        )
    # The eager backend compiles nothing and saves no artifacts: no cache traffic.
    assert compiled.first_deltas == expected
    assert_matches(compiled.name, *compiled.first)
    (result,) = compiled.backend.compiled
    pieces = [r for r in result.reports if not r.splitting]
    assert [r.cache for r in pieces] == ["miss"] * COMPILED_PIECES
    assert all(
        r.targets == ["general", "range [1, 16]", "range [17, 32]", "size 4"]
        for r in pieces
    )
    assert result.warm is False


@pytest.mark.parametrize(
    "n",
    [
        pytest.param(4, id="compile-size"),
        pytest.param(2, id="range-low"),
        pytest.param(16, id="range-low-end"),
        pytest.param(17, id="range-high-start"),
        pytest.param(32, id="max-tokens"),
    ],
)
def test_numerics_inside_sizes_and_ranges(compiled: Compiled, n: int) -> None:
    with compilation_counter.expect(
        num_backend_compilations=0, num_inductor_compiles=0
    ):
        ref, out = eager_and_compiled(compiled.model, compiled.fn, TINY, n)
    assert_matches(compiled.name, ref, out)


def test_dispatch_picks_size_then_range_then_general(compiled: Compiled) -> None:
    (result,) = compiled.backend.compiled[:1]
    for piece in compiled_pieces(result):
        runnables = piece.runnables
        assert piece.size_index is not None, piece.name
        assert piece.runnable_for(4) is runnables[Target("size", 4, 4)]
        for n in (1, 3, 5, 16):
            assert piece.runnable_for(n) is runnables[Target("range", 1, 16)], n
        for n in (17, 32):
            assert piece.runnable_for(n) is runnables[Target("range", 17, 32)], n


def test_the_compiling_process_runs_its_pieces_prebuilt(compiled: Compiled) -> None:
    """NOTE: [the compiling process runs its pieces prebuilt too] (compilers.py):
    every saved Inductor piece runs its wrapper's ``call`` without Inductor's
    runtime wrappers, as a warm process would."""
    if compiled.name != "inductor":
        pytest.skip("the eager backend saves no pieces")
    (result,) = compiled.backend.compiled[:1]
    for piece in compiled_pieces(result):
        assert set(piece.runnables) == TARGETS, piece.name
        for target, runnable in piece.runnables.items():
            inner = runnable
            while hasattr(inner, "__wrapped__"):
                inner = inner.__wrapped__
            where = getattr(getattr(inner, "__code__", None), "co_filename", inner)
            assert str(where).startswith("<stitch-prebuilt-"), (piece.name, target)


def test_ranges_share_the_general_runnable(compiled: Compiled) -> None:
    (result,) = compiled.backend.compiled
    for piece in compiled_pieces(result):
        general = piece.runnables[Target("general")]
        assert piece.runnables[Target("range", 1, 16)] is general
        assert piece.runnables[Target("range", 17, 32)] is general
        if compiled.name == "inductor":
            assert piece.runnables[Target("size", 4, 4)] is not general


def test_size_outside_every_range_runs_general_and_warns_once(
    compiled: Compiled, caplog: pytest.LogCaptureFixture
) -> None:
    n = MAX_TOKENS + 8
    with caplog.at_level(logging.WARNING, logger="stitch"):
        with compilation_counter.expect(
            num_backend_compilations=0, num_inductor_compiles=0
        ):
            ref, out = eager_and_compiled(compiled.model, compiled.fn, TINY, n)
        assert_matches(compiled.name, ref, out)
        first = stitch_warnings(caplog)
        caplog.clear()
        ref, out = eager_and_compiled(compiled.model, compiled.fn, TINY, n + 1)
        assert_matches(compiled.name, ref, out)
        assert stitch_warnings(caplog) == []
    # One warning per compiled model (not one per piece), naming the size.
    assert len(first) == 1, first
    assert f"size {n} is outside every compile range" in first[0]
    for piece in compiled_pieces(compiled.backend.compiled[0]):
        assert piece.runnable_for(n) is piece.general


# -- batch size 1 ----------------------------------------------------------------------


def test_batch_size_one_recompiles_a_static_graph(compiled: Compiled) -> None:
    # Dynamo's 0/1 specialization (see the module docstring): size 1 fails the
    # dynamic graph's guard, so Dynamo traces a static graph and the backend runs
    # again.  With no SymInt in it, every piece has only its general target.
    expected_compiles = COMPILED_PIECES if compiled.name == "inductor" else 0
    with compilation_counter.expect(
        num_backend_compilations=1, num_inductor_compiles=expected_compiles
    ):
        ref, out = eager_and_compiled(compiled.model, compiled.fn, TINY, 1)
    assert_matches(compiled.name, ref, out)
    static = compiled.backend.compiled[1]
    assert all(b.size_index is None for b in compiled_pieces(static))
    assert [r.targets for r in static.reports if not r.splitting] == [["general"]] * 3
    # Size 1 again, and the dynamic graph's sizes, compile nothing more.
    with compilation_counter.expect(
        num_backend_compilations=0, num_inductor_compiles=0
    ):
        for n in (1, 8, 1):
            assert_matches(
                compiled.name, *eager_and_compiled(compiled.model, compiled.fn, TINY, n)
            )


@pytest.mark.parametrize(
    "backend", [pytest.param("inductor", marks=pytest.mark.slow), "eager"]
)
def test_batch_size_one_without_recompile_when_unbacked(
    backend: str, tmp_path: Path
) -> None:
    # mark_unbacked makes the token count a symbol Dynamo never specializes on 0
    # or 1: one graph, one backend call, every size dispatched by Stitch.
    model = model_for(TINY)
    be, fn = compile_model(model, small_config(tmp_path, backend))
    with compilation_counter.expect(num_backend_compilations=1):
        for n in (8, 1, 4, 17, 1):
            ref, out = eager_and_compiled(model, fn, TINY, n, mark="unbacked")
            assert_matches(backend, ref, out)
    (result,) = be.compiled
    for piece in compiled_pieces(result):
        assert piece.runnable_for(1) is piece.runnables[Target("range", 1, 16)]


# -- dedup -----------------------------------------------------------------------------


# A deeper model adds only repeats of the middle piece.  Six layers give five
# middle pieces, four of them sharing the first one's compiles; a serving
# model's dozens of layers would cost Dynamo about a second each to trace here
# and check nothing more.
DEEP_LAYERS = 6


@pytest.mark.slow
def test_deep_model_compiles_as_many_pieces_as_a_shallow_one(
    compiled: Compiled, tmp_path: Path
) -> None:
    if compiled.name != "inductor":
        pytest.skip("counts Inductor compiles")
    cfg = LlamaConfig(num_layers=DEEP_LAYERS)
    model = model_for(cfg)
    be, fn = compile_model(model, small_config(tmp_path))
    with counting() as deltas:
        ref, out = eager_and_compiled(model, fn, cfg, 8)
    torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    # Same number of Inductor compiles as the 2-layer model: the middle pieces
    # are structural repeats and compile once per compiled target.
    assert (
        deltas["num_inductor_compiles"]
        == compiled.first_deltas["num_inductor_compiles"]
    )
    assert deltas["num_inductor_compiles"] == UNIQUE_PIECES * COMPILED_TARGETS
    assert deltas["num_compiled_artifacts_saved"] == UNIQUE_PIECES * COMPILED_TARGETS
    assert deltas["num_piecewise_graphs_seen"] == 2 * DEEP_LAYERS + 1
    assert deltas["num_piecewise_capturable_graphs_seen"] == DEEP_LAYERS + 1

    (result,) = be.compiled
    pieces = [r for r in result.reports if not r.splitting]
    repeats = DEEP_LAYERS - 2
    assert [r.cache for r in pieces] == ["miss", "miss"] + ["shared"] * repeats + [
        "miss"
    ]
    # Repeated pieces run the very same compiled code; each passes its own weights.
    first_middle = result.backends[pieces[1].name]
    for report in pieces[2:-1]:
        repeat = result.backends[report.name]
        assert repeat.runnables == first_middle.runnables
    for n in (4, 8, 20):
        ref, out = eager_and_compiled(model, fn, cfg, n)
        torch.testing.assert_close(out, ref, **INDUCTOR_TOL)


# -- debug dump ------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["config", "env"])
def test_debug_dump_shows_what_runs(
    via: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = tmp_path / "dump"
    if via == "env":
        monkeypatch.setenv("STITCH_DEBUG_DUMP", str(dump))
        config = small_config(tmp_path / "cache", "eager")
    else:
        config = small_config(tmp_path / "cache", "eager", debug_dump_path=str(dump))
    model = model_for(TINY)
    be, fn = compile_model(model, config)
    assert_matches("eager", *eager_and_compiled(model, fn, TINY, 8))
    (result,) = be.compiled

    assert sorted(os.listdir(dump)) == [
        "computation_graph.py",
        "execution_fn.py",
        "index.md",
    ]
    code = (dump / "execution_fn.py").read_text()
    assert code == result.code
    # The function Dynamo runs was compiled from the cache's copy of this text
    # (tracebacks read it there); without a cache, from the dump's.
    assert be.fns[0].__code__.co_filename == os.path.join(
        result.cache_dir, "execution_fn.py"
    )
    assert Path(be.fns[0].__code__.co_filename).read_text() == code
    no_cache = small_config(
        tmp_path / "cache", "eager", debug_dump_path=str(dump), disable_cache=True
    )
    model2 = model_for(TINY)
    be2, fn2 = compile_model(model2, no_cache)
    assert_matches("eager", *eager_and_compiled(model2, fn2, TINY, 8))
    assert be2.fns[0].__code__.co_filename == str(dump / "execution_fn.py")

    graph = (dump / "computation_graph.py").read_text()
    ast.parse(graph)
    for report in result.reports:
        assert f"self.{report.name}(" in graph, report.name

    rows = [
        line
        for line in (dump / "index.md").read_text().splitlines()
        if line.startswith("| submod_")
    ]
    assert len(rows) == PIECES
    for report, row in zip(result.reports, rows, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == report.name
        assert cells[1] == (
            "splitting (eager, inlined)" if report.splitting else "compiled"
        )
        assert cells[3] == (", ".join(report.targets) or "-")
        assert cells[5] == report.cache


# -- backend="stitch" ------------------------------------------------------------------


def test_backend_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (entry,) = [
        e
        for e in importlib.metadata.entry_points(group="torch_dynamo_backends")
        if e.name == "stitch"
    ]
    assert entry.value == "stitch.runtime.pipeline.backend:stitch_backend"
    assert "stitch" in torch._dynamo.list_backends()

    # The default config caches under $STITCH_CACHE_DIR and compiles each piece
    # for its general shape only; counted with its pieces compiled in the call.
    monkeypatch.setenv("STITCH_CACHE_DIR", str(tmp_path))
    model = model_for(TINY)
    fn = torch.compile(model, backend=StitchBackend(tiered_start=False), fullgraph=True)
    with compilation_counter.expect(
        num_backend_compilations=1, num_inductor_compiles=UNIQUE_PIECES
    ):
        ref, out = eager_and_compiled(model, fn, TINY, 8)
    torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    indexes = list(tmp_path.glob("*/rank_0/index.py"))
    assert len(indexes) == 1
    assert re.search(r"'backend': 'inductor'", indexes[0].read_text())
    # backend="stitch", the users' default, starts warm from that entry
    # (tiered_start is not in the cache key): it compiles nothing.
    fn = torch.compile(model, backend="stitch", fullgraph=True)
    with compilation_counter.expect(
        num_backend_compilations=1, num_inductor_compiles=0
    ):
        ref, out = eager_and_compiled(model, fn, TINY, 8)
    torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    assert list(tmp_path.glob("*/rank_0/index.py")) == indexes
