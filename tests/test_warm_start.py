"""Warm start: a new process with the same model, config and cache directory.

One worker process compiles cold into an empty cache; a second, fresh process,
whose Inductor cache is empty, compiles the same model again.  The second must compile nothing with Inductor,
load every artifact from the cache, run the stitching source read back from the
cache (its sha256 checked against the index), and compute the same outputs.

The model has 3 layers, so two of its pieces are structural repeats: a warm start
is warm for a model with repeated pieces too (every real model has them).
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from stitch.runtime import CompilationConfig
from stitch.runtime.examples import LlamaConfig
from stitch.runtime.store.cache import INDEX_FILE, SOURCE_FILE

from backend_support import (
    INDUCTOR_TOL,
    compile_model,
    counting,
    eager_and_compiled,
    model_for,
    run_worker,
)

# Every test reads the runs of two fresh processes (a cold compile, a warm start).
pytestmark = pytest.mark.slow

LAYERS = 3
MODEL = LlamaConfig(num_layers=LAYERS)

# Compiled in the backend call (the tests count the compiles: tiered_start=False).
CONFIG = {
    "compile_sizes": [4],
    "compile_ranges_split_points": [16],
    "max_num_batched_tokens": 32,
    "tiered_start": False,
}
# Size 1 makes Dynamo trace a second, static graph (see test_backend.py).  Each
# graph has 4 compiled pieces, 3 of them unique (the middle two are repeats): the
# dynamic graph's 3 unique pieces x 2 compiled targets (general and size 4; the
# two ranges share the general artifact) plus the static graph's 3 general.
SIZES = [8, 1, 4, 20]
ARTIFACTS = 3 * 2 + 3
PIECE_STATES = ["hit", "hit", "shared", "hit"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("warm")
    spec = {
        "cache_dir": str(tmp / "cache"),
        "config": CONFIG,
        "sizes": SIZES,
        "layers": LAYERS,
    }
    cold = run_worker({**spec, "outputs": str(tmp / "cold.pt")})
    # The Stitch cache alone makes a warm start: Inductor's cache is empty.
    empty = {"TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor-empty")}
    warm = run_worker({**spec, "outputs": str(tmp / "warm.pt")}, env=empty)
    return {
        "root": tmp / "cache",
        "cold": cold,
        "warm": warm,
        "cold_out": torch.load(tmp / "cold.pt"),
        "warm_out": torch.load(tmp / "warm.pt"),
    }


def test_cold_start_compiles_everything(runs: dict[str, Any]) -> None:
    cold = runs["cold"]
    assert cold["warnings"] == []
    assert cold["counter"]["num_backend_compilations"] == 2
    assert cold["counter"]["num_inductor_compiles"] == ARTIFACTS
    assert cold["counter"]["num_compiled_artifacts_saved"] == ARTIFACTS
    assert cold["counter"].get("num_cache_hits", 0) == 0
    assert [c["warm"] for c in cold["compiled"]] == [False, False]


def test_warm_start_compiles_nothing_and_loads_everything(runs: dict[str, Any]) -> None:
    warm = runs["warm"]
    assert warm["warnings"] == []
    counter = warm["counter"]
    assert counter["num_backend_compilations"] == 2
    assert counter.get("num_inductor_compiles", 0) == 0
    assert counter.get("num_cache_misses", 0) == 0
    assert counter.get("num_cache_faults", 0) == 0
    assert counter["num_cache_hits"] == ARTIFACTS
    assert counter["num_compiled_artifacts_loaded"] == ARTIFACTS
    # Every piece loads from its prebuilt record: no Inductor load, no kernel build.
    assert counter["num_prebuilt_loads"] == ARTIFACTS
    for compiled in warm["compiled"]:
        assert [state for _, state in compiled["reports"]] == PIECE_STATES
    assert [c["warm"] for c in warm["compiled"]] == [True, True]


def test_warm_start_runs_the_cached_source(runs: dict[str, Any]) -> None:
    cold, warm = runs["cold"], runs["warm"]
    assert len(cold["compiled"]) == 2, cold["compiled"]  # as warm: two graphs
    for c, w in zip(cold["compiled"], warm["compiled"], strict=True):
        assert w["cache_dir"] == c["cache_dir"]
        assert w["code_sha256"] == c["code_sha256"]
        entry = Path(w["cache_dir"])
        index = ast.literal_eval((entry / INDEX_FILE).read_text())
        on_disk = hashlib.sha256((entry / SOURCE_FILE).read_bytes()).hexdigest()
        assert index["source"]["file"] == SOURCE_FILE
        assert index["source"]["sha256"] == on_disk == w["code_sha256"]


def test_warm_start_gives_the_same_results(runs: dict[str, Any]) -> None:
    model = model_for(MODEL)
    for n in SIZES:
        # Same artifacts, same kernels: the same bits as the cold process.
        assert torch.equal(runs["warm_out"][n], runs["cold_out"][n]), n
        ref, _ = eager_and_compiled(model, model, MODEL, n)
        torch.testing.assert_close(runs["warm_out"][n], ref, **INDUCTOR_TOL)
        assert runs["warm"]["diffs"][str(n)] < INDUCTOR_TOL["atol"]


def test_other_config_does_not_reuse_the_entry(runs: dict[str, Any]) -> None:
    # Same cache root, a config that changes compiled code (the upper range
    # becomes [17, 64]): its own entry.
    torch._dynamo.reset()
    model = model_for(MODEL)
    config = CompilationConfig(
        cache_dir=str(runs["root"]), **{**CONFIG, "max_num_batched_tokens": 64}
    )
    be, fn = compile_model(model, config)
    with counting() as deltas:
        ref, out = eager_and_compiled(model, fn, MODEL, 8)
    torch._dynamo.reset()
    torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    assert deltas.get("num_cache_hits", 0) == 0
    assert deltas["num_inductor_compiles"] == 3 * 2
    assert be.compiled[0].cache_dir not in {
        c["cache_dir"] for c in runs["cold"]["compiled"]
    }
