"""transformers models, unmodified, compiled piecewise.

Every family (``stitch.runtime.hf.models.FAMILIES``: tiny configs, random
weights, no download) is compiled once per module with
``torch.compile(model, backend=StitchBackend(default config), dynamic=True)``
and shared by the tests: it splits at every attention (SDPA is a default
splitting op), one graph serves sequence lengths 7, 16 and 33 and a second one
length 1 (Dynamo's 0/1 specialization), and every output matches eager.

NOTE: [heavy cases rotate]
A family's cold Inductor compile costs 30-60 s on two busy cores, too much
for eight families in the default run.  So every family runs the checks above
with eager pieces (Dynamo, the split and the emitted function as in
production: only the piece compiler differs), and one family a day (the day's
ordinal picks it; ``STITCH_HF_FAMILY=<name>`` picks another) runs them with
Inductor pieces, plus the costlier checks: the same Inductor compile count at
2 and 4 layers, and a warm start in a second process with zero Inductor
compiles.  ``STITCH_SLOW=1`` gives every family the Inductor treatment
(``STITCH_SLOW=1 python -m pytest tests/test_hf.py``); the skipped cases say
so.  The Llama decode with a static KV cache always uses Inductor pieces.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from backend_support import INDUCTOR_TOL, counting, parse_worker  # noqa: E402

from stitch.codegen.errors import StitchConfigError, StitchRuntimeError  # noqa: E402
from stitch.runtime import CompilationConfig, StitchBackend  # noqa: E402
from stitch.runtime.cli.main import HF_FAMILIES, main  # noqa: E402
from stitch.runtime.hf import (  # noqa: E402
    FAMILIES,
    build_model,
    example_inputs,
    output_tensor,
)
from stitch.runtime.hf.decode import greedy_decode  # noqa: E402

# See NOTE: [many compiles of one forward] in conftest.py.
pytestmark = pytest.mark.usefixtures("dynamo_state")

NAMES = sorted(FAMILIES)
SLOW = os.environ.get("STITCH_SLOW", "") == "1"
ROTATING = os.environ.get("STITCH_HF_FAMILY") or NAMES[
    datetime.date.today().toordinal() % len(NAMES)
]
if ROTATING not in FAMILIES:
    raise StitchConfigError(f"STITCH_HF_FAMILY={ROTATING!r} is not one of {NAMES}")
DYNAMIC_LENGTHS = (7, 16, 33)
LENGTHS = DYNAMIC_LENGTHS + (1,)
BATCH = 2
DEEP_LAYERS = 4  # test_identical_layers_share_compiles, against the families' 2
WORKER = Path(__file__).with_name("hf_worker.py")
SDPA = torch._C._nn.scaled_dot_product_attention


def heavy(name: str) -> bool:
    return SLOW or name == ROTATING


def skip_unless_heavy(name: str) -> None:
    if not heavy(name):
        pytest.skip(
            f"slow for {name}: today's Inductor family is {ROTATING}; STITCH_SLOW=1 "
            "runs every family (see NOTE: [heavy cases rotate])"
        )


class FamilyRun:
    """One family's tiny model compiled with the default config, run at every length.

    ``attn``: None, the model's default attention (SDPA, or transformers' eager
    attention for Gemma 2 and GPT-OSS); ``"stitch"``, Stitch's op.  Every
    output is compared with the default attention's eager output.  Inductor
    pieces for the heavy families' default attention, eager pieces otherwise
    (NOTE: [heavy cases rotate]); everything else is the default config.
    """

    def __init__(self, name: str, cache_dir: Path, attn: str | None = None) -> None:
        # The families share transformers' forward wrappers: a reset keeps the
        # Dynamo cache entries of one family from counting against the next.
        torch._dynamo.reset()
        self.name = name
        self.attn = attn
        self.cache_dir = cache_dir
        self.piece_compiler = "inductor" if heavy(name) and attn == split_attn(name) else "eager"
        # NOTE: from_config writes the implementation into its config: each
        # model is built from a config of its own (build_model makes one).
        self.reference = build_model(name)
        self.model = self.reference if attn is None else build_model(name, attn_implementation=attn)
        self.default_attention = self.reference.config._attn_implementation
        config = CompilationConfig(backend=self.piece_compiler, cache_dir=str(cache_dir))
        self.backend = StitchBackend(config)
        self.compiled = torch.compile(self.model, backend=self.backend, dynamic=True)
        self.outputs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.length_deltas: dict[int, dict[str, int]] = {}
        handler = _Records()
        stitch_log = logging.getLogger("stitch")
        stitch_log.addHandler(handler)
        try:
            with torch.no_grad():
                with counting() as self.dynamic_deltas:
                    for n in DYNAMIC_LENGTHS:
                        with counting() as self.length_deltas[n]:
                            self.run(n)
                with counting() as self.one_deltas:
                    self.run(1)
        finally:
            stitch_log.removeHandler(handler)
        self.warnings = handler.warnings

    def run(self, n: int) -> None:
        kwargs = example_inputs(self.name, BATCH, n, seed=n)
        ref = output_tensor(self.name, self.reference(**kwargs))
        eager = output_tensor(self.name, self.model(**kwargs))
        out = output_tensor(self.name, self.compiled(**kwargs))
        self.outputs[n] = (ref, eager, out)

    def splits_at(self) -> Any:
        """The op the default config splits this run at, or None (nothing to split)."""
        if self.attn == "stitch":
            return torch.ops.stitch.hf_attention  # Dynamo keeps the packet
        return SDPA if self.default_attention == "sdpa" else None


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.warnings.append(record.getMessage())


def split_attn(name: str) -> str | None:
    """The attention the heavy checks use: the default where it splits, else Stitch's."""
    return None if FAMILIES[name].default_attention == "sdpa" else "stitch"


class _Runs:
    """The module's runs, each built once, whichever fixture asks first."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp = tmp_path_factory
        self.runs: dict[tuple[str, str | None], FamilyRun] = {}

    def get(self, name: str, attn: str | None) -> FamilyRun:
        if (name, attn) not in self.runs:
            cache = self.tmp.mktemp(f"cache-{name}-{attn or 'default'}")
            self.runs[name, attn] = FamilyRun(name, cache, attn)
        return self.runs[name, attn]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> _Runs:
    return _Runs(tmp_path_factory)


@pytest.fixture(scope="module", params=NAMES)
def family_run(request: pytest.FixtureRequest, runs: _Runs) -> FamilyRun:
    return runs.get(request.param, None)


@pytest.fixture(scope="module", params=NAMES)
def stitch_run(request: pytest.FixtureRequest, runs: _Runs) -> FamilyRun:
    return runs.get(request.param, "stitch")


@pytest.fixture(scope="module", params=NAMES)
def split_run(request: pytest.FixtureRequest, runs: _Runs) -> FamilyRun:
    """The run of the heavy checks (``split_attn``): it splits at every attention."""
    return runs.get(request.param, split_attn(request.param))


def _check_numbers(run: FamilyRun) -> None:
    assert set(run.outputs) == set(LENGTHS)
    for n, (ref, eager, out) in run.outputs.items():
        what = f"{run.name}, attn={run.attn or run.default_attention}, length {n}"
        # the attention under test, eager, against the default attention's
        torch.testing.assert_close(eager, ref, rtol=1e-5, atol=1e-5, msg=what)
        if run.piece_compiler == "eager":
            # Dynamo's ops, in eager order: the same bits as the model's eager run.
            assert torch.equal(out, eager), what
        else:
            torch.testing.assert_close(out, ref, **INDUCTOR_TOL, msg=what)


def _check_splits(run: FamilyRun) -> None:
    layers = 2
    op = run.splits_at()
    for result in run.backend.compiled:
        kinds = [r.splitting for r in result.reports]
        if op is None:
            assert kinds == [False], (run.name, kinds)
            continue
        # compiled, attention, compiled, attention, compiled
        assert kinds == [False, True] * layers + [False], run.name
        for report in result.reports:
            if not report.splitting:
                continue
            piece = getattr(result.split_gm, report.name)
            targets = [n.target for n in piece.graph.nodes if n.op == "call_function"]
            assert op in targets, (report.name, targets)
    unsplit = [w for w in run.warnings if "no splitting op" in w]
    if op is None:
        # NOTE: [a transformers model with nothing to split] in splitting.py
        assert len(unsplit) == 1, run.warnings
        assert type(run.model.model).__name__ in unsplit[0], unsplit
        assert 'register() and build the model with attn_implementation="stitch"' in unsplit[0]
    else:
        assert unsplit == [], run.warnings


# -- every family, its default attention -------------------------------------------


@pytest.mark.slow
def test_family_matches_eager_at_every_length(family_run: FamilyRun) -> None:
    _check_numbers(family_run)


@pytest.mark.slow
def test_default_config_splits_at_every_attention(family_run: FamilyRun) -> None:
    """SDPA splits; a default eager attention (Gemma 2, GPT-OSS) is one piece and one warning."""
    _check_splits(family_run)


@pytest.mark.slow
def test_lengths_of_two_tokens_or_more_share_one_graph(family_run: FamilyRun) -> None:
    deltas = family_run.dynamic_deltas
    assert deltas["num_backend_compilations"] == 1, deltas
    # Length 1 is one more graph (Dynamo's 0/1 specialization), then no more.
    assert family_run.one_deltas["num_backend_compilations"] == 1
    assert len(family_run.backend.compiled) == 2


# -- every family, Stitch's attention ----------------------------------------------


@pytest.mark.slow
def test_stitch_attention_matches_default_eager_at_every_length(stitch_run: FamilyRun) -> None:
    _check_numbers(stitch_run)


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
    if run.attn == "stitch" and run.piece_compiler == "eager" and run.name in EAGER_PIECE_FAULTS:
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
    _check_splits(stitch_run)


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


# -- heavy cases, one family a day (NOTE: [heavy cases rotate]) ---------------------


@pytest.mark.slow
def test_inductor_compiles_each_unique_piece_once(split_run: FamilyRun) -> None:
    skip_unless_heavy(split_run.name)
    # first piece, the middle one (at 2 layers, once), the last one; the
    # lifted floats are specialized before any compile, so none is wasted
    assert split_run.dynamic_deltas["num_inductor_compiles"] == 3, split_run.dynamic_deltas
    assert split_run.one_deltas["num_inductor_compiles"] == 3, split_run.one_deltas


@pytest.mark.slow
def test_identical_layers_share_compiles(split_run: FamilyRun, tmp_path: Path) -> None:
    skip_unless_heavy(split_run.name)
    torch._dynamo.reset()
    # 4 layers: three middle pieces, two of them twins of the first (more
    # layers would add only twins, at seconds of Dynamo tracing each).
    model = build_model(split_run.name, layers=DEEP_LAYERS, attn_implementation=split_run.attn)
    backend = StitchBackend(CompilationConfig(cache_dir=str(tmp_path)))
    compiled = torch.compile(model, backend=backend, dynamic=True)
    kwargs = example_inputs(split_run.name, BATCH, 7)
    with counting() as deltas, torch.no_grad():
        out = output_tensor(split_run.name, compiled(**kwargs))
    torch.testing.assert_close(out, output_tensor(split_run.name, model(**kwargs)), **INDUCTOR_TOL)
    assert sum(r.splitting for r in backend.compiled[0].reports) == DEEP_LAYERS
    assert deltas["num_inductor_compiles"] == split_run.dynamic_deltas["num_inductor_compiles"]


@pytest.mark.slow
def test_second_process_starts_warm(split_run: FamilyRun) -> None:
    skip_unless_heavy(split_run.name)
    spec = {
        "family": split_run.name,
        "attn": split_run.attn,
        "layers": 2,
        "cache_dir": str(split_run.cache_dir),
        "lengths": list(LENGTHS),
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(WORKER), __import__("json").dumps(spec)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    report = parse_worker(proc.returncode, proc.stdout, proc.stderr)
    assert report["deltas"]["num_inductor_compiles"] == 0, report
    assert report["warm"] == [True] * len(split_run.backend.compiled), report
    assert report["max_error"] < 1e-4, report


# -- the "stitch" attention implementation -------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_stitch_attention_gives_the_default_attentions_numbers(name: str) -> None:
    default = build_model(name)
    stitch = build_model(name, attn_implementation="stitch")
    assert stitch.config._attn_implementation == "stitch"
    assert default.config._attn_implementation == FAMILIES[name].default_attention
    with torch.no_grad():
        for n in (1, 7, 33):
            kwargs = example_inputs(name, BATCH, n, seed=n)
            torch.testing.assert_close(
                output_tensor(name, stitch(**kwargs)),
                output_tensor(name, default(**kwargs)),
                rtol=1e-5, atol=1e-5,
            )


def test_stitch_attention_refuses_dropout_and_attention_weights() -> None:
    model = build_model("llama", attn_implementation="stitch", attention_dropout=0.1)
    kwargs = example_inputs("llama", 1, 3)
    with pytest.raises(StitchRuntimeError, match=r"LlamaAttention \(layer 0\): dropout=0.1 .*model.eval\(\)"):
        model.train()(**kwargs)
    with pytest.raises(StitchRuntimeError, match="output_attentions=True"):
        model.eval()(**kwargs, output_attentions=True)


class Decode:
    """A Llama with Stitch's attention and a static KV cache, decoded greedily.

    The shapes are the README's (prompt 2 x 6, 8 new tokens: a cache of 14), so
    its block finds these compiles in Inductor's cache; the second prompt is
    longer and decodes fewer tokens into a cache of the same size.
    """

    def __init__(self) -> None:
        torch._dynamo.reset()
        self.model = build_model("llama", attn_implementation="stitch")
        self.backend = StitchBackend(CompilationConfig(disable_cache=True))
        self.compiled = torch.compile(self.model, backend=self.backend, dynamic=True)
        gen = torch.Generator().manual_seed(0)
        self.prompts = [torch.randint(3, 512, (BATCH, n), generator=gen) for n in (6, 9)]
        with counting() as self.first:
            self.tokens = greedy_decode(self.compiled, self.model, self.prompts[0], 8)
        with counting() as self.second:
            self.tokens_2 = greedy_decode(self.compiled, self.model, self.prompts[1], 5)


@pytest.fixture(scope="module")
def decode() -> Decode:
    return Decode()


@pytest.mark.slow
def test_static_cache_decode_gives_eager_tokens(decode: Decode) -> None:
    assert torch.equal(decode.tokens, greedy_decode(decode.model, decode.model, decode.prompts[0], 8))
    assert torch.equal(decode.tokens_2, greedy_decode(decode.model, decode.model, decode.prompts[1], 5))


@pytest.mark.slow
def test_one_compile_for_the_prefill_and_one_for_every_decode_step(decode: Decode) -> None:
    assert decode.first["num_backend_compilations"] == 2, decode.first
    # a prompt of another length: nothing new to compile
    assert decode.second.get("num_backend_compilations", 0) == 0, decode.second
    assert decode.second.get("num_inductor_compiles", 0) == 0, decode.second
    for result in decode.backend.compiled:
        ops = [
            n.target
            for r in result.reports
            if r.splitting
            for n in getattr(result.split_gm, r.name).graph.nodes
            if n.op == "call_function"
        ]
        op = torch.ops.stitch.hf_attention
        assert sum(t in (op, op.default) for t in ops) == 2, ops


# -- the command line ---------------------------------------------------------------


def test_cli_lists_the_families_of_the_package() -> None:
    assert HF_FAMILIES == tuple(NAMES)


@pytest.mark.slow
def test_stitch_run_hf_prints_pieces_counts_and_times(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch._dynamo.reset()
    status = main(
        ["run", "--hf", "gpt2", "--backend", "eager", "--sizes", "5,9", "--layers", "1",
         "--cache-dir", str(tmp_path / "cache"), "--dump", str(tmp_path / "dump")]
    )
    text = capsys.readouterr().out
    assert status == 0, text
    assert "stitch run --hf gpt2: GPT2LMHeadModel, 1 layers" in text
    assert "graph 1: 3 pieces (1 splitting, 2 compiled)" in text
    assert re.search(r"compiles: 1 graphs, 0 Inductor compiles", text)
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(r.split("|")[1]) for r in rows] == [5, 9]
    assert all(r.rstrip().endswith("| yes |") for r in rows)


def test_stitch_run_hf_rejects_static_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--hf", "llama", "--compile-sizes", "4"]) == 2
    assert "--compile-sizes and --split-points apply to --example only" in capsys.readouterr().err
