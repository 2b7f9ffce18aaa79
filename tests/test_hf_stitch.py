"""Every transformers family with Stitch's attention (``attn_implementation="stitch"``), compiled.

Each family's tiny model (tests/hf_support.py) with ``"stitch"``, compiled with
the default config and eager pieces (Dynamo, the split and the emitted function
as in production; Inductor pieces are the heavy checks' of tests/test_hf.py),
run at lengths 7, 16, 33 and 1: the numbers of the default attention's eager
run, a split at every ``stitch::hf_attention``, and no graph per length.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from hf_support import (  # noqa: E402
    NAMES,
    FamilyRun,
    Runs,
    check_names,
    check_numbers,
    check_splits,
)

# See NOTE: [many compiles of one forward] in conftest.py.
pytestmark = pytest.mark.usefixtures("dynamo_state")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory)


@pytest.fixture(scope="module", params=NAMES)
def stitch_run(request: pytest.FixtureRequest, runs: Runs) -> FamilyRun:
    return runs.get(request.param, "stitch", inductor=False)


@pytest.mark.slow
def test_stitch_attention_matches_default_eager_at_every_length(
    stitch_run: FamilyRun,
) -> None:
    check_numbers(stitch_run)


@pytest.mark.slow
def test_stitch_attention_emitted_names_are_the_models(stitch_run: FamilyRun) -> None:
    check_names(stitch_run)


# A known fault of eager pieces, not of the attention: GPT-2's gelu reads
# math.pi, which Dynamo lifts to a graph input (a global, read with .item());
# with eager pieces lifted floats are not specialized, and Stitch's fake
# propagation of the split graph (plan.piece_inputs) raises
# DataDependentOutputException on that .item() in the piece after the first
# attention, so Dynamo falls back to graph breaks (13 graphs; the numbers stay
# right).  The same model with SDPA does not meet it (why is not known yet);
# with Inductor pieces (lifted floats specialized up front) it splits as it
# should.  It predates the sinks and softcap work (the code before it breaks alike).
# Strict: the day it is fixed, these fail until the mark goes.
EAGER_PIECE_FAULTS = {"gpt2"}


def _mark_known_fault(run: FamilyRun, request: pytest.FixtureRequest) -> None:
    if (
        run.attn == "stitch"
        and run.piece_compiler == "eager"
        and run.name in EAGER_PIECE_FAULTS
    ):
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason=f"{run.name}: a lifted global float breaks eager pieces' fake propagation",
            )
        )


@pytest.mark.slow
def test_stitch_attention_splits_at_every_attention(
    stitch_run: FamilyRun, request: pytest.FixtureRequest
) -> None:
    _mark_known_fault(stitch_run, request)
    check_splits(stitch_run)


@pytest.mark.slow
def test_stitch_attention_lengths_share_graphs(
    stitch_run: FamilyRun, request: pytest.FixtureRequest
) -> None:
    _mark_known_fault(stitch_run, request)
    # transformers' mask builder guards on the sliding window (a length below
    # the window skips the mask), so 7 may be a graph of its own where a
    # window is 8; 33 after 16 never is.
    assert stitch_run.length_deltas[33].get("num_backend_compilations", 0) == 0
    assert stitch_run.dynamic_deltas["num_backend_compilations"] <= 2
    assert stitch_run.one_deltas["num_backend_compilations"] == 1
