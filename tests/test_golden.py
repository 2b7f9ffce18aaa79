"""Golden files: the emitted source of every reference case, byte for byte.

``golden/test_golden/<case>.py`` holds what ``generate_execution_code`` emits for
the case ``tests/models.py::CASES[<case>]``.  Every golden also runs: it is loaded
with ``compile_execution_fn`` and compared with the split GraphModule and with the
unsplit model on random inputs.

Update after an intended change with::

    python -m pytest tests/test_golden.py --snapshot-update
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import black
import pytest
import torch
from conftest import GOLDEN_DIR, UPDATE_COMMAND
from torch.utils._pytree import tree_flatten

from stitch.codegen import lower_execution
from stitch.codegen.emit import BLACK_MODE, render_module_with_black
from stitch.runtime import compile_execution_fn
from stitch.runtime.cli import main

from models import CASES, Case, emit_case


def assert_same_outputs(expected: Any, actual: Any, *, exact: bool) -> None:
    expected_leaves, expected_spec = tree_flatten(expected)
    actual_leaves, actual_spec = tree_flatten(actual)
    assert actual_spec == expected_spec
    for e, a in zip(expected_leaves, actual_leaves, strict=True):
        if isinstance(e, torch.Tensor):
            tolerance = {"rtol": 0.0, "atol": 0.0} if exact else {}
            torch.testing.assert_close(a, e, equal_nan=True, **tolerance)
        else:
            assert type(a) is type(e) and a == e


def run(case: Case, fn: Any, inputs: tuple[Any, ...]) -> Any:
    if case.reset is not None:
        case.reset()
    args = [x.clone() if isinstance(x, torch.Tensor) else x for x in inputs]
    with torch.no_grad():
        return fn(*args)


@pytest.mark.parametrize("name", list(CASES))
def test_golden(name: str, golden: Any) -> None:
    golden(emit_case(name).code)


@pytest.mark.parametrize("name", list(CASES))
def test_golden_is_what_black_writes(name: str) -> None:
    """black defines the format: the emitted source is black's formatting of the
    module with each statement on one line, and black leaves it unchanged."""
    emitted = emit_case(name)
    context, _, _ = lower_execution(emitted.split_gm)
    assert emitted.code == render_module_with_black(context)
    assert black.format_str(emitted.code, mode=BLACK_MODE) == emitted.code


@pytest.mark.parametrize("name", list(CASES))
def test_golden_runs(name: str) -> None:
    """The golden file, loaded and bound to its pieces, computes what the model does."""
    emitted = emit_case(name)
    case = emitted.case
    path = GOLDEN_DIR / Path(__file__).stem / f"{name}.py"
    if not path.exists():
        pytest.fail(
            f"{path.relative_to(GOLDEN_DIR.parent)} is missing; create it with "
            + UPDATE_COMMAND.format(module="tests/test_golden.py"),
            pytrace=False,
        )
    fn = compile_execution_fn(
        path.read_text(encoding="utf-8"),
        dict(emitted.split_gm.named_children()),
        emitted.submod_names,
        emitted.consts,
    )
    for seed in case.seeds:
        inputs = case.make_inputs(seed)
        expected = run(case, case.reference, inputs)
        from_pieces = run(case, emitted.split_gm, inputs)
        actual = run(case, fn, inputs)
        # Same kernels in the same order: the stitched function is bit-exact.
        assert_same_outputs(from_pieces, actual, exact=True)
        assert_same_outputs(expected, actual, exact=False)


# The examples `stitch emit` still traces with make_fx (no llama-like forward
# to compile; NOTE: [emit shows what a compile runs]), and their goldens here.
TRACED_EXAMPLE_CASES = {"bare_attention": "bare_attention"}


def _stitch_emit(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["emit", *argv]) == 0
    return out.getvalue()


@pytest.mark.parametrize("name", list(TRACED_EXAMPLE_CASES))
def test_example_goldens_are_what_stitch_emit_prints(name: str) -> None:
    """``stitch emit --example NAME`` prints the golden of the example's case."""
    assert _stitch_emit("--example", TRACED_EXAMPLE_CASES[name]) == (
        emit_case(name).code
    )


def test_stitch_emit_of_the_llama_example_is_the_real_compiles_golden() -> None:
    """The llama examples go through a real compile: ``stitch emit --example
    llama --layers 2`` prints tests/test_emit_golden.py's golden, Dynamo's graph
    with readable names, not the make_fx graph of this module's goldens."""
    torch._dynamo.reset()
    golden = GOLDEN_DIR / "test_emit_golden" / "llama_2_layer.py"
    printed = _stitch_emit("--example", "llama", "--layers", "2")
    torch._dynamo.reset()
    assert printed == golden.read_text(encoding="utf-8")
    assert "arg0_1" not in printed and "_param_constant" not in printed
