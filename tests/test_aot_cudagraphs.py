"""``aot_compile`` with CUDA graphs: saved by a cold process, rebuilt by a warm one.

On CPU the graphs are emulated (``EmulatedGraphOps``, see test_cudagraph_cpu.py):
a replay re-runs the captured call on the captured arguments, so a runtime
that did not pad into its static buffers, or wrapped the wrong pieces,
computes stale results here as it would on a GPU.  Per mode a cold process
compiles and saves; a fresh warm process (Inductor's cache empty) loads the
saved forward without Dynamo or Inductor, wraps the pieces in the same padded
runner and graphs (captured anew, as every process must), and its outputs
match eager and the cold process's.  The modes share one Stitch cache: CUDA
graph settings change no compiled piece, but they are part of what a saved
forward is valid for, so the next mode's cold process finds the record stale.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest
import torch

from stitch.core.errors import StitchCacheError
from stitch.runtime.cudagraph import DynamicInput, PaddingPlan
from stitch.runtime.cudagraph.graph_plan import GraphPlan

from aot_support import MODEL_SOURCE, PIECES, run_worker
from backend_support import INDUCTOR_TOL

CAPTURE_SIZES = [1, 2, 4, 8]
GRAPHS = {
    "cudagraph_capture_sizes": CAPTURE_SIZES,
    "cudagraph_pad_values": {"positions": -1},
}
# Each size three times (a warm-up, the capture, a replay); 3 pads to 4; 12 is
# above the largest capture size and runs without graphs.
SIZES = [8, 8, 8, 3, 3, 3, 2, 2, 2, 12, 1, 1, 1]
# mode -> (config fields, graphs captured: one per piece and size, one per size
# for a full graph)
MODES: dict[str, tuple[dict[str, Any], int]] = {
    "piecewise": ({"cudagraph_mode": "PIECEWISE"}, PIECES * 4),
    "full": ({"cudagraph_mode": "FULL"}, 4),
    "full_and_piecewise": (
        {"cudagraph_mode": "FULL_AND_PIECEWISE", "max_full_cudagraph_size": 2},
        2 + PIECES * 2,
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("aot_graphs")
    model_file = tmp / "aot_test_model.py"
    model_file.write_text(MODEL_SOURCE)
    found: dict[str, Any] = {}
    for mode, (fields, _) in MODES.items():
        spec = {
            "model_file": str(model_file),
            "cache_dir": str(tmp / "cache"),
            "sizes": SIZES,
            "emulate_graphs": True,
            "config": {**GRAPHS, **fields},
        }
        # The cold process uses the test run's Inductor cache (what it checks
        # does not depend on it); the warm one an empty cache of its own.
        cold = run_worker({**spec, "outputs": str(tmp / f"{mode}-cold.pt")})
        warm = run_worker(
            {**spec, "outputs": str(tmp / f"{mode}-warm.pt")},
            tmp / f"inductor-empty-{mode}",
        )
        found[mode] = {
            "cold": cold,
            "warm": warm,
            "cold_out": torch.load(tmp / f"{mode}-cold.pt"),
            "warm_out": torch.load(tmp / f"{mode}-warm.pt"),
            "empty_inductor": tmp / f"inductor-empty-{mode}",
        }
    found["tmp"] = tmp
    return found


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_cold_process_runs_graphs_and_saves(runs: dict[str, Any], mode: str) -> None:
    cold = runs[mode]["cold"]
    assert cold["warm"] is False and cold["path"], cold["warnings"]
    if mode == "piecewise":  # the first: an empty cache
        assert cold["warnings"] == []
        assert cold["counter"]["num_inductor_compiles"] == PIECES
    else:  # the record the mode before saved has other graph settings
        (warning,) = cold["warnings"]
        assert "stale" in warning and "CUDA graph settings cudagraph_mode" in warning
        assert cold["counter"].get("num_inductor_compiles", 0) == 0
        assert cold["counter"]["num_cache_hits"] == PIECES
    assert cold["graph_runners"] == 1
    assert cold["counter"]["num_cudagraph_captured"] == MODES[mode][1]
    assert cold["replays"] > 0
    assert max(cold["diffs"].values()) < INDUCTOR_TOL["atol"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_warm_process_rebuilds_the_graphs_without_compiling(
    runs: dict[str, Any], mode: str
) -> None:
    warm = runs[mode]["warm"]
    assert warm["warm"] is True
    assert warm["warnings"] == []
    assert warm["imported"] == []
    assert warm["plain_function"]
    counter = warm["counter"]
    assert counter.get("num_backend_compilations", 0) == 0
    assert counter.get("num_inductor_compiles", 0) == 0
    assert counter["num_prebuilt_loads"] == PIECES
    empty = runs[mode]["empty_inductor"]
    assert not empty.exists() or not any(empty.iterdir())
    # The same graphs as the cold process: a padded runner, every graph captured.
    assert warm["graph_runners"] == 1
    assert counter["num_cudagraph_captured"] == MODES[mode][1]
    assert warm["replays"] == runs[mode]["cold"]["replays"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_warm_outputs_match_eager_and_the_cold_process(
    runs: dict[str, Any], mode: str
) -> None:
    assert max(runs[mode]["warm"]["diffs"].values()) < INDUCTOR_TOL["atol"]
    for n in set(SIZES):
        assert torch.equal(runs[mode]["warm_out"][n], runs[mode]["cold_out"][n]), n


# -- the saved plan --------------------------------------------------------------------------

PLAN = GraphPlan(
    PaddingPlan(
        size_index=1,
        size_indices=(1, 4),
        dynamic=(
            DynamicInput(2, "input_ids", (), torch.int64, torch.device("cpu"), 0),
            DynamicInput(5, "positions", (), torch.int64, torch.device("cpu"), -1),
            DynamicInput(6, "hidden", (64,), torch.float16, torch.device("cpu"), 0.5),
        ),
        slice_outputs=(True, False),
        flat_output=True,
    ),
    last=3,
)


def test_a_plan_survives_its_literal() -> None:
    literal = PLAN.to_literal()
    assert ast.literal_eval(repr(literal)) == literal
    assert GraphPlan.from_literal(ast.literal_eval(repr(literal))) == PLAN


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda p: p.update(format=9), "unknown field format"),
        (
            lambda p: p["dynamic"][0].update(dtype="floaty"),
            "field dynamic[0].dtype: is 'floaty', not a torch dtype",
        ),
        (
            lambda p: p["dynamic"][1].update(pad="-1"),
            "field dynamic[1].pad: expected int | float, got str ('-1')",
        ),
        (lambda p: p["dynamic"][0].update(device="gpu:x"), "field dynamic[0].device"),
        (lambda p: p.update(size_index=3), "size_index is not a size argument"),
        (
            lambda p: p.update(slice_outputs=[1]),
            "field slice_outputs[0]: expected bool, got int (1)",
        ),
        (lambda p: p.update(last="2"), "field last: expected int, got str ('2')"),
    ],
)
def test_a_malformed_plan_is_refused_naming_the_field(change: Any, says: str) -> None:
    literal = PLAN.to_literal()
    change(literal)
    with pytest.raises(StitchCacheError, match=re.escape(says)):
        GraphPlan.from_literal(literal)
