"""A saved forward checks what it is given (issue 19): every row of the table, cold and warm.

Each process is a fresh one (``input_check_worker.py``): the cold one compiles
and saves the forward, then calls it with each row's inputs; the warm one loads
it and does the same.  A process that aborts fails the rows it did not reach,
with its stderr, and not the suite.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import black
import pytest
import torch

from stitch.codegen.emit import BLACK_MODE
from stitch.codegen.input_check import (
    FORWARDS,
    FUNCTION,
    GUARDS,
    IN_RANGE,
    MISMATCH,
    InputCheckSpec,
    InputSignature,
    ObjectInput,
    TensorInput,
    ValueInput,
    generate_input_check,
)
from stitch.core.errors import StitchError, StitchInputError
from stitch.runtime.cli.inspect_job import inspect_cache
from stitch.runtime.loader import bind_kwonly, load_execution_module
from stitch.runtime.pipeline.graph_inputs import GraphInput
from stitch.runtime.saved.arguments import CallArgs
from stitch.runtime.saved.input_signature import (
    describe,
    forward_params,
    in_range,
    mismatches,
    tensor_guards,
)

from backend_support import INDUCTOR_TOL, worker_env

WORKER = Path(__file__).with_name("input_check_worker.py")
ROWS = [
    "int64",
    "int32_ids",
    "int32_ids_again",
    "float_ids",
    "noncontiguous_ids",
    "2d_ids",
    "different_lengths",
    "zero_tokens_int32_positions",
    "ids_out_of_range",
    "negative_ids",
    "int32_ids_out_of_range",
    "inference_tensors",
    "out_of_range_different_lengths",
    "one_argument",
    "unknown_keyword",
]


def run_rows(cache: Path) -> dict[str, Any]:
    spec = {"cache_dir": str(cache), "rows": ROWS}
    proc = subprocess.run(
        [sys.executable, str(WORKER), json.dumps(spec)],
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = {}
    report = None
    for line in proc.stdout.splitlines():
        if line.startswith("ROW "):
            row = json.loads(line[4:])
            rows[row["row"]] = row
        elif line.startswith("WORKER "):
            report = json.loads(line[7:])
    return {"proc": proc, "rows": rows, "report": report}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("input-check") / "cache"
    return {"cache": cache, "cold": run_rows(cache), "warm": run_rows(cache)}


def row(runs: dict[str, Any], process: str, name: str) -> dict[str, Any]:
    run = runs[process]
    if name not in run["rows"]:
        proc = run["proc"]
        pytest.fail(
            f"the {process} process did not report row {name} (exit {proc.returncode})\n"
            f"--- stderr (tail)\n{proc.stderr[-3000:]}"
        )
    return run["rows"][name]


PROCESSES = ["cold", "warm"]


@pytest.mark.slow
@pytest.mark.parametrize("process", PROCESSES)
def test_processes_exit_cleanly(runs: dict[str, Any], process: str) -> None:
    run = runs[process]
    assert run["proc"].returncode == 0, run["proc"].stderr[-3000:]
    assert run["report"]["warm"] is (process == "warm")


@dataclasses.dataclass(frozen=True)
class Case:
    """What one row must do in both processes (cold and warm)."""

    row: str
    # Fragments of the StitchInputError's message; none: the row runs and
    # matches eager.
    error: tuple[str, ...] = ()
    # The output's shape, where the row pins it.
    shape: tuple[int, ...] | None = None
    # Processes where the call must not even trace (no counter moves); in the
    # others it must compile nothing.
    untraced: tuple[str, ...] = ()
    # A row the check does not pin the compiles of.
    any_compiles: bool = False
    # The error's class, where the row errs.
    kind: str = "StitchInputError"


EXPECTED_INT64 = "input_ids: expected int64, got float32"
EQUAL_LENGTHS = "positions: expected shape[0] == input_ids.shape[0]"
IN_VOCAB = "input_ids: expected values in [0, 128)"
TAKES = "LlamaModel.forward (saved by aot_compile) takes (input_ids, positions)"
CASES = [
    Case("int64"),
    # What the trace said is in the message too (eager says the same).
    Case("float_ids", (EXPECTED_INT64, "Long, Int"), untraced=("warm",)),
    # Run on a contiguous copy.
    Case("noncontiguous_ids"),
    Case(
        "2d_ids",
        ("input_ids: expected rank 1, got rank 2 (shape [1, 8])",),
        untraced=("warm",),
    ),
    Case(
        "different_lengths",
        (
            EQUAL_LENGTHS,
            "got 5 and 8 (the model requires these sizes to be equal)",
        ),
        untraced=("cold", "warm"),
    ),
    Case("zero_tokens_int32_positions", shape=(0, 64), any_compiles=True),
    # Eager raises IndexError; Inductor's CPU kernel would end the process.
    Case("ids_out_of_range", (IN_VOCAB, "got values from 1")),
    Case("negative_ids", (IN_VOCAB, "got values from -")),
    Case("int32_ids_out_of_range", (IN_VOCAB, "got values from 1")),
    # What no compile changes is refused without one.
    Case(
        "out_of_range_different_lengths",
        (EQUAL_LENGTHS, IN_VOCAB),
        untraced=("cold", "warm"),
    ),
    # Their dispatch keys differ from the guard's: the slow path finds them
    # fitting, and rebuilds the guard.
    Case("inference_tensors"),
    # A call the compiled parameters do not bind: the forward and its
    # parameters are named, not the emitted check's function.
    Case(
        "one_argument",
        (TAKES, "missing 1 required positional argument: 'positions'"),
        untraced=("cold", "warm"),
        kind="StitchArgumentError",
    ),
    Case(
        "unknown_keyword",
        (TAKES, "got an unexpected keyword argument 'scale'"),
        untraced=("cold", "warm"),
        kind="StitchArgumentError",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("process", PROCESSES)
@pytest.mark.parametrize("case", CASES, ids=[c.row for c in CASES])
def test_row(runs: dict[str, Any], process: str, case: Case) -> None:
    r = row(runs, process, case.row)
    if case.error:
        assert r.get("error") == case.kind, r
        for fragment in case.error:
            assert fragment in r["message"], (fragment, r["message"])
    else:
        assert "error" not in r, r
        assert r["diff"] < INDUCTOR_TOL["atol"]
    if case.shape is not None:
        assert r["shape"] == list(case.shape)
    if process in case.untraced:
        assert r["counter"] == {}
    elif not case.any_compiles:
        assert r["counter"].get("num_backend_compilations", 0) == 0


def test_every_row_is_checked() -> None:
    # int32_ids and int32_ids_again compile: their own test below.
    assert sorted(c.row for c in CASES) == sorted(
        set(ROWS) - {"int32_ids", "int32_ids_again"}
    )


@pytest.mark.slow
def test_int32_ids_compile_once_and_are_chosen_later(runs: dict[str, Any]) -> None:
    cold = row(runs, "cold", "int32_ids")
    assert cold["diff"] < INDUCTOR_TOL["atol"]
    assert cold["counter"]["num_backend_compilations"] == 1
    # The check now has a branch for int32 ids: no compile, no slow path.
    again = row(runs, "cold", "int32_ids_again")
    assert again["diff"] < INDUCTOR_TOL["atol"]
    assert again["counter"].get("num_backend_compilations", 0) == 0
    for name in ("int32_ids", "int32_ids_again"):
        warm = row(runs, "warm", name)
        assert warm["diff"] < INDUCTOR_TOL["atol"]
        assert warm["counter"].get("num_backend_compilations", 0) == 0
        # Loaded from its saved record: prebuilt pieces, no Inductor.
        assert warm["counter"].get("num_inductor_compiles", 0) == 0


@pytest.mark.slow
def test_warm_process_imports_no_compiler(runs: dict[str, Any]) -> None:
    """Every row was seen by the cold process: the warm one compiles and traces nothing."""
    report = runs["warm"]["report"]
    assert report["imported"] == []
    assert report["warnings"] == []


@pytest.mark.slow
def test_inspect_shows_the_check(runs: dict[str, Any]) -> None:
    out = io.StringIO()
    assert inspect_cache(str(runs["cache"]), out) == 0
    text = out.getvalue()
    assert "input check:" in text
    assert "def check_forward(" in text
    # NOTE: [a guard per token count]: the ids' length picks the guard, which
    # holds every size (the relation of ids and positions included)
    assert "n0 = input_ids.shape[0]" in text
    assert "SIGNATURE_0[n0].check(input_ids, positions)" in text
    assert '("input_ids", "int64", "cpu", ("n0",), (1,), True)' in text
    assert "0 <= input_ids.item() < 128" in text
    assert "__stitch_in_range__(input_ids, 128)" in text


# -- the emitted check and the diagnosis, in this process (no compile) ----------------

IDS = TensorInput("input_ids", "int64", "cpu", ("n0",), (1,), True, index_bound=128)
POS = TensorInput("positions", "int64", "cpu", ("n0",), (1,), True)
HIDDEN = TensorInput("hidden", "float32", "cpu", ("n0", 64), (64, 1), True)
SPEC = InputCheckSpec(
    "tests.Model.forward",
    ("self", "input_ids", "positions", "hidden", "flag"),
    (
        InputSignature((IDS, POS, HIDDEN, ValueInput("flag", "bool", "True"))),
        InputSignature(
            (
                dataclasses.replace(IDS, dtype="int32"),
                POS,
                HIDDEN,
                ValueInput("flag", "bool", "True"),
            )
        ),
    ),
)


def load_check(code: str) -> tuple[Any, list[Any]]:
    calls: list[Any] = []
    namespace = load_execution_module(
        code, None, extra_globals={GUARDS: tensor_guards, IN_RANGE: in_range}
    )
    fn = namespace[FUNCTION]
    forwards = [
        lambda self, *a, i=i: calls.append(i) or i for i in range(len(SPEC.signatures))
    ]
    mismatch = lambda self, *a: calls.append("mismatch") or "mismatch"  # noqa: E731
    return bind_kwonly(bind_kwonly(fn, FORWARDS, forwards), MISMATCH, mismatch), calls


def test_emitted_check_golden(golden: Any) -> None:
    code = generate_input_check(SPEC)
    golden(code)
    assert code == black.format_str(code, mode=BLACK_MODE)


def inputs(n: int = 3, m: int | None = None, **changes: Any) -> list[Any]:
    args = {
        "input_ids": torch.arange(n),
        "positions": torch.arange(n if m is None else m),
        "hidden": torch.zeros(n, 64),
        "flag": True,
    }
    args.update(changes)
    return list(args.values())


@pytest.mark.parametrize(
    ("args", "chosen", "kinds"),
    [
        (inputs(), 0, []),
        (inputs(0), 0, []),
        (inputs(input_ids=torch.arange(3, dtype=torch.int32)), 1, ["dtype"]),
        (inputs(input_ids=torch.arange(3.0)), "mismatch", ["dtype"]),
        (inputs(3, 4), "mismatch", ["relation"]),
        (inputs(hidden=torch.zeros(64, 3).t()), "mismatch", ["layout"]),
        (inputs(hidden=torch.zeros(3, 32)), "mismatch", ["size"]),
        (inputs(input_ids=torch.arange(3)[None]), "mismatch", ["rank"]),
        (inputs(input_ids=[1, 2, 3]), "mismatch", ["type"]),
        (inputs(input_ids=torch.tensor(3)), "mismatch", ["rank"]),  # no shape[0]
        (inputs(hidden=torch.zeros(4, 64)), "mismatch", ["relation"]),
        (inputs(flag=False), "mismatch", ["value"]),
        (inputs(input_ids=torch.tensor([0, 128, 5])), "mismatch", ["bounds"]),
        (inputs(input_ids=torch.tensor([-1, 1, 5])), "mismatch", ["bounds"]),
        # one id (NOTE: [one token id]): read alone
        (inputs(1, input_ids=torch.tensor([127])), 0, []),
        (inputs(1, input_ids=torch.tensor([128])), "mismatch", ["bounds"]),
        (inputs(1, input_ids=torch.tensor([-1])), "mismatch", ["bounds"]),
    ],
)
def test_check_chooses_a_signature_or_the_slow_path(
    args: list[Any], chosen: Any, kinds: list[str]
) -> None:
    check, calls = load_check(generate_input_check(SPEC))
    assert check(None, *args) == chosen
    assert calls == [chosen]
    assert [m.kind for m in mismatches(SPEC.signatures[0], args)] == kinds


def test_a_guard_per_token_count() -> None:
    """NOTE: [a guard per token count]: built on first use of a size, all sizes static."""
    guards = tensor_guards(
        ("ids", "int64", "cpu", ("n0",), (1,), True),
        ("hidden", "float32", "cpu", ("n0", "n1", 4), (None, 4, 1), True),
        ("other", "float32", "cpu", (2, "n1"), (None, 1), False),
    )
    ids, hidden = torch.arange(3), torch.zeros(3, 5, 4)
    assert guards[3, 5].check(ids, hidden, torch.zeros(2, 5))
    assert not guards[3, 5].check(ids, torch.zeros(3, 6, 4), torch.zeros(2, 5))
    assert not guards[3, 5].check(torch.arange(4), hidden, torch.zeros(2, 5))
    # contiguous: the strides of those sizes; the other keeps only its static one
    assert not guards[3, 5].check(
        ids, torch.zeros(5, 3, 4).transpose(0, 1), torch.zeros(2, 5)
    )
    assert guards[3, 5].check(ids, hidden, torch.zeros(2, 7)[:, :5])
    assert sorted(guards) == [(3, 5)]
    for key in (None, 3, (3, None), (-1, 2), (3, "5")):
        assert not guards[key].check(ids, hidden, torch.zeros(2, 5))
    assert sorted(guards) == [(3, 5)]  # nothing kept for what no tensor has
    one = tensor_guards(("ids", "int64", "cpu", ("n0",), (1,), True))
    one.LIMIT = 2
    for n in range(4):
        assert one[n].check(torch.arange(n))
    assert sorted(one) == [0, 1]


def test_mismatch_messages_name_the_argument() -> None:
    (m,) = mismatches(SPEC.signatures[0], inputs(3, 5))
    assert str(m) == (
        "positions: expected shape[0] == input_ids.shape[0] (one size n0), got 5 and 3"
    )
    (m,) = mismatches(SPEC.signatures[0], inputs(input_ids=torch.arange(3.0)))
    assert str(m) == "input_ids: expected int64, got float32"


def test_signatures_round_trip_as_literals() -> None:
    for sig in SPEC.signatures:
        assert (
            InputSignature.from_literal(ast.literal_eval(repr(sig.to_literal()))) == sig
        )
    assert SPEC.signatures[0].key() != SPEC.signatures[1].key()


@pytest.mark.parametrize(
    ("values", "inside"),
    [
        ([], True),
        ([0, 127], True),
        ([0, 128], False),
        ([-1, 5], False),
        (list(range(100)), True),  # past the list path: reductions
        ([*range(100), 128], False),
        ([*range(100), -3], False),
    ],
)
def test_in_range(values: list[int], inside: bool) -> None:
    t = torch.tensor(values, dtype=torch.int64)
    assert in_range(t, 128) is inside
    assert in_range(t.reshape(1, -1), 128) is inside


class VarArgs(torch.nn.Module):
    def forward(
        self, input_ids: Any, positions: Any, *hidden: Any, flag: bool = True
    ) -> Any:
        return input_ids


def test_check_arguments_take_the_forward_parameter_names() -> None:
    assert forward_params(VarArgs(), 2) == ("self", "input_ids", "positions")
    assert forward_params(VarArgs(), 4) == (
        "self",
        "input_ids",
        "positions",
        "hidden_0",
        "hidden_1",
    )


def test_input_error_is_a_stitch_error() -> None:
    assert issubclass(StitchInputError, StitchError)
    assert StitchInputError.__module__ == "stitch.core.errors"


# -- keyword arguments and an object argument (a transformers StaticCache) ---------


class Layer:
    def __init__(self, length: int) -> None:
        self.keys = torch.zeros(1, 2, length, 4)
        self.cumulative_length = torch.tensor(0)


class Cache:
    def __init__(self, length: int = 8) -> None:
        self.layers = [Layer(length), Layer(length)]


def cache_spec() -> InputCheckSpec:
    cache = Cache()
    ids = torch.zeros(1, 1, dtype=torch.int64)
    args = CallArgs((ids, cache, True), ("past_key_values", "use_cache"))
    graph = [GraphInput(ids, (1, 1), False, 128)]
    graph += [
        GraphInput(t, tuple(t.shape), True)
        for layer in cache.layers
        for t in (layer.keys, layer.cumulative_length)
    ]
    params = ("self", "input_ids", "past_key_values", "use_cache")
    sig = describe(params[1:], args, [[], [], []], graph)
    return InputCheckSpec("tests.Cached.forward", params, (sig,), args.keywords)


def test_an_object_argument_is_checked_by_the_tensors_the_graph_reads() -> None:
    spec = cache_spec()
    (obj,) = [i for i in spec.signatures[0].inputs if isinstance(i, ObjectInput)]
    assert [t.name for t in obj.tensors] == [
        "past_key_values.layers[0].keys",
        "past_key_values.layers[0].cumulative_length",
        "past_key_values.layers[1].keys",
        "past_key_values.layers[1].cumulative_length",
    ]
    assert all(t.mutated for t in obj.tensors)
    assert (
        InputSignature.from_literal(spec.signatures[0].to_literal())
        == spec.signatures[0]
    )
    code = generate_input_check(spec)
    assert (
        "def check_forward(\n    self,\n    input_ids,\n    *,\n    past_key_values,"
        in code
    )
    assert "0 <= input_ids.item() < 128" in code
    calls: list[Any] = []
    namespace = load_execution_module(
        code, None, extra_globals={GUARDS: tensor_guards, IN_RANGE: in_range}
    )
    forward = (
        lambda self, ids, **kw: calls.append(("forward", sorted(kw))) or 0
    )  # noqa: E731
    mismatch = lambda self, ids, **kw: calls.append("mismatch") or 1  # noqa: E731
    check = bind_kwonly(
        bind_kwonly(namespace[FUNCTION], FORWARDS, [forward]), MISMATCH, mismatch
    )
    ids = torch.zeros(1, 1, dtype=torch.int64)
    assert check(None, ids, past_key_values=Cache(), use_cache=True) == 0
    assert calls.pop() == ("forward", ["past_key_values", "use_cache"])
    # Another cache length, a missing layer, another type, ids out of range.
    short = Cache()
    del short.layers[1]
    bad_ids = torch.full((1, 1), 128)
    for cache, given in (
        (Cache(16), ids),
        (short, ids),
        (Layer(8), ids),
        (Cache(), bad_ids),
    ):
        assert check(None, given, past_key_values=cache, use_cache=True) == 1
        assert calls.pop() == "mismatch"
    # The diagnosis names the tensor inside the object.
    found = mismatches(spec.signatures[0], (ids, Cache(16), True))
    assert [(m.kind, m.name) for m in found] == [
        ("size", "past_key_values.layers[0].keys"),
        ("size", "past_key_values.layers[1].keys"),
    ]
    found = mismatches(spec.signatures[0], (ids, short, True))
    assert [(m.kind, m.name) for m in found] == [
        ("type", "past_key_values.layers[1].keys"),
        ("type", "past_key_values.layers[1].cumulative_length"),
    ]
