"""transformers models, unmodified, compiled piecewise.

Every family (``stitch.runtime.hf.tiny_models.FAMILIES``: tiny configs, random
weights, no download) is compiled once per module with
``torch.compile(model, backend=StitchBackend(default config), dynamic=True)``,
its pieces compiled in the backend call (``tiered_start=False``: the tests
count compiles and start warm from the entry), and shared by the tests: it
splits at every attention (SDPA is a default
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

Gemma 2 and GPT-OSS default to transformers' eager attention, which holds no
splitting op: their default runs check one piece and the warning that says
so, and their heavy checks run Stitch's attention instead.  Every family with
Stitch's attention, compiled, is in tests/test_hf_stitch.py (the runs are
shared from tests/hf_support.py).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

pytest.importorskip("transformers")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import PreTrainedModel  # noqa: E402

from stitch.core.errors import StitchConfigError, StitchRuntimeError  # noqa: E402
from stitch.runtime import CompilationConfig, StitchBackend  # noqa: E402
from stitch.runtime.cli.main import main  # noqa: E402
from stitch.runtime.cli.options import HF_FAMILIES  # noqa: E402
from stitch.runtime.harness.hf_decode import greedy_decode  # noqa: E402
from stitch.runtime.hf import (  # noqa: E402
    FAMILIES,
    build_model,
    example_inputs,
    output_tensor,
    register,
)
from stitch.runtime.hf.registration import unserved_attention  # noqa: E402
from stitch.runtime.hf.tiny_models import VOCAB  # noqa: E402

from backend_support import (  # noqa: E402
    INDUCTOR_TOL,
    counting,
    markdown_rows,
    parse_worker,
    stitch_warnings,
)
from hf_support import (  # noqa: E402
    BATCH,
    DEEP_LAYERS,
    LENGTHS,
    NAMES,
    WORKER,
    FamilyRun,
    Runs,
    check_names,
    check_numbers,
    check_splits,
    skip_unless_heavy,
    split_attn,
)

# See NOTE: [many compiles of one forward] in conftest.py.
pytestmark = pytest.mark.usefixtures("dynamo_state")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory)


@pytest.fixture(scope="module", params=NAMES)
def family_run(request: pytest.FixtureRequest, runs: Runs) -> FamilyRun:
    return runs.get(request.param, None)


@pytest.fixture(scope="module", params=NAMES)
def split_run(request: pytest.FixtureRequest, runs: Runs) -> FamilyRun:
    """The run of the heavy checks (``split_attn``): it splits at every attention.

    Skipped before it is built on the days a family is not heavy (for Gemma 2
    and GPT-OSS it is a run of its own, with Stitch's attention).
    """
    skip_unless_heavy(request.param)
    return runs.get(request.param, split_attn(request.param))


# -- every family, its default attention -------------------------------------------


@pytest.mark.slow
def test_family_matches_eager_at_every_length(family_run: FamilyRun) -> None:
    check_numbers(family_run)


@pytest.mark.slow
def test_default_config_splits_at_every_attention(family_run: FamilyRun) -> None:
    """SDPA splits; a default eager attention (Gemma 2, GPT-OSS) is one piece and one warning."""
    check_splits(family_run)


@pytest.mark.slow
def test_emitted_names_are_the_models_and_short(family_run: FamilyRun) -> None:
    check_names(family_run)


@pytest.mark.slow
def test_lengths_of_two_tokens_or_more_share_one_graph(family_run: FamilyRun) -> None:
    deltas = family_run.dynamic_deltas
    assert deltas["num_backend_compilations"] == 1, deltas
    # Length 1 is one more graph (Dynamo's 0/1 specialization), then no more.
    assert family_run.one_deltas["num_backend_compilations"] == 1
    assert len(family_run.backend.compiled) == 2


# -- heavy cases, one family a day (NOTE: [heavy cases rotate]) ---------------------


@pytest.mark.slow
def test_inductor_compiles_each_unique_piece_once(split_run: FamilyRun) -> None:
    skip_unless_heavy(split_run.name)
    # first piece, the middle one (at 2 layers, once), the last one, in each
    # graph (GPT-OSS's sliding window makes length 7 a graph of its own); the
    # lifted floats are specialized before any compile, so none is wasted
    deltas = split_run.dynamic_deltas
    per_graph = unique_pieces(split_run.model)
    assert per_graph == 3
    assert (
        deltas["num_inductor_compiles"]
        == per_graph * deltas["num_backend_compilations"]
    ), deltas
    assert (
        split_run.one_deltas["num_inductor_compiles"] == per_graph
    ), split_run.one_deltas


@pytest.mark.slow
def test_identical_layers_share_compiles(split_run: FamilyRun, tmp_path: Path) -> None:
    skip_unless_heavy(split_run.name)
    torch._dynamo.reset()
    # 4 layers: three middle pieces, two of them repeats of the first (more
    # layers would add only repeats, at seconds of Dynamo tracing each); where
    # layer types alternate (Gemma 2, GPT-OSS: sliding, full), up to two kinds
    # of middle piece (GPT-OSS's differ, Gemma 2's are the same code).
    model = build_model(
        split_run.name, layers=DEEP_LAYERS, attn_implementation=split_run.attn
    )
    # Compiles counted: in the backend call.
    backend = StitchBackend(
        CompilationConfig(cache_dir=str(tmp_path), tiered_start=False)
    )
    compiled = torch.compile(model, backend=backend, dynamic=True)
    kwargs = example_inputs(split_run.name, BATCH, 7)
    with counting() as deltas, torch.no_grad():
        out = output_tensor(split_run.name, compiled(**kwargs))
    torch.testing.assert_close(
        out, output_tensor(split_run.name, model(**kwargs)), **INDUCTOR_TOL
    )
    assert sum(r.splitting for r in backend.compiled[0].reports) == DEEP_LAYERS
    assert (
        3 <= deltas["num_inductor_compiles"] <= unique_pieces(model) < DEEP_LAYERS + 1
    ), deltas


def unique_pieces(model: torch.nn.Module) -> int:
    """Compiled pieces of one graph that may differ: the first, the last, and
    one middle piece per kind of (layer type, next layer type) pair."""
    config = model.config
    layers = (
        config.num_hidden_layers
        if hasattr(config, "num_hidden_layers")
        else config.n_layer
    )
    types = getattr(config, "layer_types", None) or ["attention"] * layers
    return 2 + len({(types[i], types[i + 1]) for i in range(layers - 1)})


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
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(WORKER.parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.run(
        [sys.executable, str(WORKER), __import__("json").dumps(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    report = parse_worker(proc.returncode, proc.stdout, proc.stderr)
    assert report["deltas"]["num_inductor_compiles"] == 0, report
    assert report["warm"] == [True] * len(split_run.backend.compiled), report
    assert report["max_error"] < 1e-4, report


# -- the "stitch" attention implementation -------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_stitch_attention_gives_the_default_attentions_numbers(name: str) -> None:
    declared = FAMILIES[name].default_attention
    default = build_model(name)
    if Version(transformers.__version__) >= Version("5.23"):
        # The family table says what transformers picks; older releases pick
        # SDPA for Gemma 2 too (5.17, the GPU image's, ignoring its softcap).
        assert default.config._attn_implementation == declared
    elif default.config._attn_implementation != declared:
        default = build_model(name, attn_implementation=declared)
    stitch = build_model(name, attn_implementation="stitch")
    assert stitch.config._attn_implementation == "stitch"
    with torch.no_grad():
        for n in (1, 7, 33):
            kwargs = example_inputs(name, BATCH, n, seed=n)
            torch.testing.assert_close(
                output_tensor(name, stitch(**kwargs)),
                output_tensor(name, default(**kwargs)),
                rtol=1e-5,
                atol=1e-5,
            )


def test_stitch_attention_refuses_dropout_and_attention_weights() -> None:
    model = build_model("llama", attn_implementation="stitch", attention_dropout=0.1)
    kwargs = example_inputs("llama", 1, 3)
    with pytest.raises(
        StitchRuntimeError,
        match=r"LlamaAttention \(layer 0\): dropout=0.1 .*model.eval\(\)",
    ):
        model.train()(**kwargs)
    with pytest.raises(StitchRuntimeError, match="output_attentions=True"):
        model.eval()(**kwargs, output_attentions=True)


# -- models "stitch" cannot serve ----------------------------------------------------
# NOTE: [models whose attention "stitch" cannot serve] in runtime/hf/registration.py.

# Tiny configs of two families whose attention does not dispatch through
# transformers' attention functions: Bloom (ALiBi in its own attention; eager
# by default, no SDPA) and Falcon (its attention class picked by the
# implementation's name; SDPA by default).
UNSERVED = {
    "bloom": (
        "BloomConfig",
        {"vocab_size": VOCAB, "hidden_size": 64, "n_head": 4, "n_layer": 2},
    ),
    "falcon": (
        "FalconConfig",
        {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
        },
    ),
}


def unserved_model(
    name: str, attn: str | None = None, auto: Any = transformers.AutoModelForCausalLM
) -> torch.nn.Module:
    config_class, fields = UNSERVED[name]
    config = getattr(transformers, config_class)(**fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return auto.from_config(config, attn_implementation=attn).eval()


def padded_inputs() -> dict[str, torch.Tensor]:
    """Two rows of 7 tokens, the last of the first row padding (the mask is built)."""
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, -1] = 0
    return {"input_ids": ids, "attention_mask": mask, "use_cache": False}


@pytest.mark.parametrize(
    "auto",
    [transformers.AutoModelForCausalLM, transformers.AutoModel],
    ids=["causal-lm", "base-model"],
)
@pytest.mark.parametrize("name", sorted(UNSERVED))
def test_stitch_attention_refuses_a_model_whose_attention_does_not_dispatch(
    name: str, auto: Any
) -> None:
    register()
    model_class = type(unserved_model(name, "eager", auto))
    attention = {"bloom": "BloomAttention", "falcon": "FalconAttention"}[name]
    with pytest.raises(StitchConfigError) as info:
        unserved_model(name, "stitch", auto)
    message = str(info.value)
    assert (
        f"attn_implementation='stitch' cannot serve {model_class.__name__}" in message
    )
    assert attention in message
    assert "does not dispatch through transformers' attention functions" in message
    # what to use instead: the default, eager, and SDPA where the model has it
    assert "default attention (no attn_implementation)" in message
    expected = '"eager" or "sdpa"' if name == "falcon" else '"eager":'
    assert f"attn_implementation={expected}" in message
    # transformers' own heuristic for the same question agrees
    if hasattr(model_class, "_can_set_attn_implementation"):
        assert model_class._can_set_attn_implementation() is False


def test_stitch_attention_is_refused_however_a_bloom_asks_for_it(
    tmp_path: Path,
) -> None:
    register()
    unserved_model("bloom").save_pretrained(tmp_path)
    with pytest.raises(StitchConfigError, match="cannot serve BloomForCausalLM"):
        transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path, attn_implementation="stitch"
        )
    # transformers' own switch keeps Bloom's attention (it warns): not "stitch"
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    model.set_attn_implementation("stitch")
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("name", NAMES)
def test_every_family_is_served_by_stitch_attention(name: str) -> None:
    register()
    model_class = type(build_model(name, attn_implementation="stitch"))
    assert unserved_attention(model_class) == []
    if hasattr(model_class, "_can_set_attn_implementation"):
        assert model_class._can_set_attn_implementation() is True


@pytest.mark.parametrize(
    ("name", "attn"),
    [
        ("bloom", None),
        ("bloom", "eager"),
        ("falcon", None),
        ("falcon", "eager"),
        ("falcon", "sdpa"),
        ("llama", "eager"),
        ("llama", "sdpa"),
    ],
)
def test_the_refusal_leaves_other_implementations_alone(
    name: str, attn: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built with the refusal installed and with transformers' own method (as
    before register()): the same implementation and the same logits."""
    register()
    register()  # idempotent: one wrapper around transformers' method
    checked = PreTrainedModel.get_correct_attn_implementation
    original = checked.__wrapped__
    assert original.__module__ == "transformers.modeling_utils"

    def build() -> torch.nn.Module:
        if name == "llama":
            return build_model(name, attn_implementation=attn)
        return unserved_model(name, attn)

    after = build()
    monkeypatch.setattr(PreTrainedModel, "get_correct_attn_implementation", original)
    before = build()
    assert after.config._attn_implementation == before.config._attn_implementation
    with torch.no_grad():
        assert torch.equal(
            after(**padded_inputs()).logits, before(**padded_inputs()).logits
        )


def test_a_model_stitch_cannot_split_warns_naming_its_attention(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bloom's default (eager, ALiBi) compiles as one piece, and says why."""
    torch._dynamo.reset()
    model = unserved_model("bloom")
    assert model.config._attn_implementation == "eager"
    backend = StitchBackend(backend="eager", disable_cache=True)
    with caplog.at_level(logging.INFO, logger="stitch"), torch.no_grad():
        out = torch.compile(model, backend=backend)(**padded_inputs()).logits
        assert torch.equal(out, model(**padded_inputs()).logits)
    assert all(
        [r.splitting for r in result.reports] == [False] for result in backend.compiled
    )
    (message,) = stitch_warnings(caplog)
    assert (
        "holds attention modules (transformer.h.0.self_attention (BloomAttention), "
        "transformer.h.1.self_attention (BloomAttention))" in message
    )
    assert "compiles as one piece" in message
    assert "torch.library.custom_op" in message
    assert (
        "BloomAttention does not dispatch through transformers' attention "
        'functions, so attn_implementation="stitch" cannot route it' in message
    )


class Decode:
    """A Llama with Stitch's attention and a static KV cache, decoded greedily.

    The shapes are docs/transformers.md's (prompt 2 x 6, 8 new tokens: a cache of 14), so
    its block finds these compiles in Inductor's cache; the second prompt is
    longer and decodes fewer tokens into a cache of the same size.
    """

    def __init__(self) -> None:
        torch._dynamo.reset()
        self.model = build_model("llama", attn_implementation="stitch")
        # Compiles counted: in the backend call (as without a cache anyway).
        config = CompilationConfig(disable_cache=True, tiered_start=False)
        self.backend = StitchBackend(config)
        self.compiled = torch.compile(self.model, backend=self.backend, dynamic=True)
        gen = torch.Generator().manual_seed(0)
        self.prompts = [
            torch.randint(3, 512, (BATCH, n), generator=gen) for n in (6, 9)
        ]
        with counting() as self.first:
            self.tokens = greedy_decode(self.compiled, self.model, self.prompts[0], 8)
        with counting() as self.second:
            self.tokens_2 = greedy_decode(self.compiled, self.model, self.prompts[1], 5)


@pytest.fixture(scope="module")
def decode() -> Decode:
    return Decode()


@pytest.mark.slow
def test_static_cache_decode_gives_eager_tokens(decode: Decode) -> None:
    assert torch.equal(
        decode.tokens, greedy_decode(decode.model, decode.model, decode.prompts[0], 8)
    )
    assert torch.equal(
        decode.tokens_2, greedy_decode(decode.model, decode.model, decode.prompts[1], 5)
    )


@pytest.mark.slow
def test_one_compile_for_the_prefill_and_one_for_every_decode_step(
    decode: Decode,
) -> None:
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
        [
            "run",
            "--hf",
            "gpt2",
            "--backend",
            "eager",
            "--sizes",
            "5,9",
            "--layers",
            "1",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--dump",
            str(tmp_path / "dump"),
        ]
    )
    text = capsys.readouterr().out
    assert status == 0, text
    assert "stitch run --hf gpt2: GPT2LMHeadModel, 1 layers" in text
    assert "graph 1: 3 pieces (1 splitting, 2 compiled)" in text
    assert re.search(r"compiles: 1 graphs, 0 Inductor compiles", text)
    every = markdown_rows(text)
    start = [r[0] for r in every].index("tokens")
    piece_rows, table = every[:start], every[start:]
    assert piece_rows[0] == ["piece", "cache", "module"]
    assert [r[1] for r in piece_rows[1:]].count("split") == 1
    assert table[0][0] == "tokens" and table[0][-1] == "ok"
    rows = table[1:]
    assert [int(r[0]) for r in rows] == [5, 9]
    assert [r[-1] for r in rows] == ["yes"] * 2


def test_stitch_run_hf_rejects_static_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--hf", "llama", "--compile-sizes", "4"]) == 2
    assert (
        "--compile-sizes, --split-points and --tiered apply to --example only"
        in capsys.readouterr().err
    )
