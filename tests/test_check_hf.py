"""``check_model`` on every transformers family the project builds: a correct
model, so the check must name no piece.

Eager pieces (Dynamo, the split and the emitted function as served; only the
piece compiler differs, NOTE: [heavy cases rotate] in tests/test_hf.py), and
Inductor pieces for the Llama.  Each family is one compile of two seconds to
half a minute on two busy cores: marked slow.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from stitch.runtime import CompilationConfig  # noqa: E402
from stitch.runtime.check import Forward, check_model  # noqa: E402
from stitch.runtime.hf import FAMILIES, build_model, example_inputs  # noqa: E402

# See NOTE: [many compiles of one forward] in conftest.py.
pytestmark = pytest.mark.usefixtures("dynamo_state")

# Lengths of two tokens or more share one graph (Dynamo's 0/1 specialization
# gives length 1 its own: tests/test_hf.py checks that one).
LENGTHS = (7, 16)


def check_family(name: str, backend: str) -> None:
    torch._dynamo.reset()
    model = build_model(name, layers=2)
    forwards = [Forward(n, (), example_inputs(name, 2, n, seed=n)) for n in LENGTHS]
    config = CompilationConfig(backend=backend, disable_cache=True)
    report = check_model(model, forwards, config, dynamic=True)
    assert report.pieces, f"{name}: no compiled piece"
    assert all(p.calls == len(LENGTHS) for p in report.pieces)
    assert report.ok, f"{name}:\n{report.table()}\n{report.verdict()}"
    assert report.first is None


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_is_right_piece_by_piece(name: str) -> None:
    check_family(name, "eager")


@pytest.mark.slow
def test_inductor_pieces_of_a_llama_are_right() -> None:
    check_family("llama", "inductor")
