"""Your own model from the command line: ``stitch run|profile --model DIR`` and ``--module PKG.MOD:FACTORY``.

The checkpoints are tiny transformers models (the ``--hf`` families' configs,
random weights) saved with ``save_pretrained(safe_serialization=True)`` into a
temporary folder; the factories are modules written into one.  Pieces compile
with ``--backend eager`` (Dynamo, the split and the emitted function as in
production) but for one Inductor run.  Every bad input is one line on stderr
that names its file or name, and exit status 1.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from stitch.core.errors import StitchModelError
from stitch.runtime.cli import main
from stitch.runtime.cli.main import build_parser
from stitch.runtime.cli.model_choice import resolve_model

from backend_support import markdown_rows

transformers = pytest.importorskip("transformers")

from stitch.runtime.hf import build_model, example_inputs  # noqa: E402
from stitch.runtime.hf.checkpoint import PROMPT  # noqa: E402


def _save(model: torch.nn.Module, folder: Path, **kwargs: Any) -> Path:
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    """The model of ``--hf llama`` (2 layers, seed 0)."""
    return build_model("llama", layers=2)


@pytest.fixture(scope="module")
def checkpoint(llama: torch.nn.Module, tmp_path_factory: Any) -> Path:
    return _save(llama, tmp_path_factory.mktemp("llama"))


def _resolve(*argv: str) -> Any:
    args = build_parser().parse_args(["run", *argv])
    return resolve_model(args, sizes=[3, 9])


def _run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    torch._dynamo.reset()
    capsys.readouterr()  # what the test's set-up printed (save_pretrained's bars)
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _pieces(text: str) -> list[list[str]]:
    """The piece tables' (piece, split or compiled, module) rows."""
    return [
        [r[0], "split" if r[1] == "split" else "compiled", r[2]]
        for r in markdown_rows(text)
        if r[0].startswith("submod_")
    ]


def _checked(text: str) -> list[list[str]]:
    rows = markdown_rows(text)
    start = [r[0] for r in rows].index("tokens")
    return [[r[0], r[-1]] for r in rows[start + 1 :]]


# -- --model DIR ----------------------------------------------------------------------


def test_a_checkpoint_loads_its_weights(
    checkpoint: Path, llama: torch.nn.Module
) -> None:
    choice = _resolve("--model", str(checkpoint))
    assert choice.flag == f"--model {checkpoint}"
    assert "LlamaForCausalLM, 2 layers, float32 on cpu" in choice.description
    assert "input ids at random" in choice.description
    kwargs = example_inputs("llama", 2, 5)
    with torch.no_grad():
        # The saved weights, not a fresh random init.
        assert torch.equal(choice.model(**kwargs).logits, llama(**kwargs).logits)
    assert [c.size for c in choice.calls] == [3, 9]
    ids = choice.calls[1].kwargs["input_ids"]
    assert ids.shape == (2, 9) and int(ids.max()) < llama.config.vocab_size
    assert choice.calls[1].kwargs["use_cache"] is False


@pytest.mark.slow
def test_run_model_splits_and_checks_as_hf_does(
    checkpoint: Path, tmp_path: Path, capsys: Any
) -> None:
    common = ["--backend", "eager", "--sizes", "3,9"]
    status, text, _ = _run(
        capsys, "run", "--model", str(checkpoint), *common,
        "--cache-dir", str(tmp_path / "model"),
    )  # fmt: skip
    assert status == 0, text
    assert text.startswith(f"stitch run --model {checkpoint}: LlamaForCausalLM")
    status, hf, _ = _run(
        capsys, "run", "--hf", "llama", *common, "--cache-dir", str(tmp_path / "hf")
    )
    assert status == 0, hf
    assert _pieces(text) == _pieces(hf)
    assert [r for r in _pieces(text) if r[1] == "split"] == [
        ["submod_1", "split", "model.layers.0.self_attn"],
        ["submod_3", "split", "model.layers.1.self_attn"],
    ]
    assert _checked(text) == [["3", "yes"], ["9", "yes"]]
    assert re.search(r"compiles: 1 graphs, 0 Inductor compiles", text)
    source = Path(re.search(r"emitted source: (\S+)", text).group(1))
    assert source.is_relative_to(tmp_path / "model")
    assert "def execution_fn(" in source.read_text()


@pytest.mark.slow
def test_a_bf16_checkpoint_runs_in_bf16(
    llama: torch.nn.Module, tmp_path: Path, capsys: Any
) -> None:
    folder = _save(build_model("llama", layers=2).to(torch.bfloat16), tmp_path / "bf")
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    choice = _resolve("--model", str(folder))
    assert {p.dtype for p in choice.model.parameters()} == {torch.bfloat16}
    assert "bfloat16 on cpu" in choice.description
    with torch.no_grad():
        (logits,) = choice.eager(choice.calls[0])
    assert logits.dtype == torch.bfloat16
    status, text, _ = _run(
        capsys, "run", "--model", str(folder), "--backend", "eager",
        "--sizes", "4", "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert status == 0, text
    assert "bfloat16 on cpu" in text and _checked(text) == [["4", "yes"]]


def test_a_sharded_checkpoint_loads_every_shard(
    llama: torch.nn.Module, tmp_path: Path
) -> None:
    folder = _save(llama, tmp_path / "sharded", max_shard_size="100KB")
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("*.safetensors"))) > 2
    choice = _resolve("--model", str(folder))
    for (name, want), got in zip(
        llama.state_dict().items(), choice.model.state_dict().values(), strict=True
    ):
        assert torch.equal(want, got), name


def test_a_tokenizer_makes_the_input_ids(
    llama: torch.nn.Module, tmp_path: Path
) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(re.findall(r"\w+|[^\w\s]", PROMPT)))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    folder = _save(llama, tmp_path / "tok")
    fast.save_pretrained(folder)
    prompt = fast(PROMPT)["input_ids"]
    assert len(prompt) > 5 and 0 not in prompt  # every word known

    choice = _resolve("--model", str(folder))
    assert "input ids from its tokenizer" in choice.description
    ids = choice.calls[1].kwargs["input_ids"]  # 2 rows of 9 tokens
    assert ids.tolist() == [prompt[:9], (prompt * 2)[1:10]]


@pytest.mark.slow
def test_run_model_with_inductor_pieces(
    checkpoint: Path, tmp_path: Path, capsys: Any
) -> None:
    status, text, _ = _run(
        capsys, "run", "--model", str(checkpoint), "--sizes", "5",
        "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert status == 0, text
    assert "backend inductor" in text
    # One Inductor compile per compiled piece at 2 layers: the first, the
    # middle one and the last (tests/test_hf.py counts them per family).
    assert "compiles: 1 graphs, 3 Inductor compiles" in text
    assert _checked(text) == [["5", "yes"]]


@pytest.mark.slow
def test_profile_model(checkpoint: Path, tmp_path: Path, capsys: Any) -> None:
    status, text, _ = _run(
        capsys, "profile", "--model", str(checkpoint), "--backend", "eager",
        "--sizes", "2,6", "--iters", "1", "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert status == 0, text
    assert text.startswith(f"stitch profile --model {checkpoint} (LlamaForCausalLM")
    assert "size 2:" in text and "size 6:" in text
    attention = [r for r in markdown_rows(text) if r[1] == "splitting"]
    assert len(attention) == 2 * 2  # two layers at two sizes


def test_check_model(checkpoint: Path, tmp_path: Path, capsys: Any) -> None:
    """``stitch check`` resolves ``--model`` as run does: every piece of the
    saved checkpoint checked beside its uncompiled form, none off."""
    status, text, _ = _run(
        capsys, "check", "--model", str(checkpoint), "--backend", "eager",
        "--sizes", "2,6", "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert status == 0, text
    assert text.startswith(f"stitch check --model {checkpoint}: LlamaForCausalLM")
    pieces = [r[0] for r in markdown_rows(text) if r[0].startswith("submod_")]
    assert pieces == ["submod_0", "submod_2", "submod_4"], text
    assert "every piece agrees with its uncompiled form" in text


@pytest.mark.slow
def test_profile_model_decode_steps(
    checkpoint: Path, tmp_path: Path, capsys: Any
) -> None:
    status, text, _ = _run(
        capsys, "profile", "--model", str(checkpoint), "--decode", "--backend",
        "eager", "--sizes", "2", "--iters", "1", "--cache-dir", str(tmp_path / "c"),
    )  # fmt: skip
    assert status == 0, text
    assert "size decode batch 2:" in text
    attention = [r for r in markdown_rows(text) if r[1] == "splitting"]
    assert [r[2] for r in attention] == [
        "model.layers.0.self_attn",
        "model.layers.1.self_attn",
    ]


@pytest.mark.slow
def test_emit_model_prints_its_source_and_refuses_what_run_refuses(
    checkpoint: Path, tmp_path: Path, capsys: Any
) -> None:
    """``stitch emit --model DIR`` resolves the folder as ``stitch run`` does
    (NOTE: [one resolution of the model choice]): the source of its compile,
    named after the model, and a bad folder's one line, the same as run's."""
    status, code, err = _run(capsys, "emit", "--model", str(checkpoint))
    assert status == 0, err
    assert code.startswith("# Stitching source emitted by stitch.codegen")
    assert "    layers_0_self_attn_q_proj_weight,\n" in code
    assert "#   batch_size: size input_ids.size(0)\n" in code
    assert "#   seq_len: size input_ids.size(1)\n" in code
    assert not re.search(r"\b[su][0-9]+\b", code), code
    folder = _broken(checkpoint, tmp_path)
    (folder / "config.json").unlink()
    status, _, err = _run(capsys, "emit", "--model", str(folder))
    assert status == 1, err
    refused = _error(capsys, "--model", str(folder))
    assert err.strip() == refused.replace("stitch run:", "stitch emit:", 1)
    assert f"--model {folder}: no config.json" in err


# -- --module PKG.MOD:FACTORY ------------------------------------------------------------

FACTORY = """
import torch


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, x):
        q = self.proj(x).view(1, x.shape[0], 2, 8).transpose(1, 2)
        y = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        return y.transpose(1, 2).reshape(x.shape[0], 16) + x


class Noisy(torch.nn.Module):
    def forward(self, x):
        return x + torch.rand_like(x)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(Block(), Block())


def sized():
    return model(), lambda n: (torch.randn(n, 16),)


class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()

    def forward(self, x, *, scale):
        return self.block(x) * scale


def with_kwargs():
    return Scaled(), (torch.randn(5, 16),), {"scale": torch.tensor(2.0)}


def noisy():
    return Noisy(), (torch.zeros(4, 16),)


def sized_kwargs():
    def inputs(n):
        return (torch.randn(n, 16),), {"scale": torch.tensor(2.0)}

    return Scaled(), inputs
"""


def _module(source: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of ``source`` in ``folder``, made the current folder, by a
    name unique in the process (the import system keeps the first module of a
    name); ``{ns}`` in ``source`` is that name.  ``--module`` puts the current
    folder on sys.path, as python -m does: the test puts sys.path back."""
    name = f"factories_{uuid.uuid4().hex[:12]}"
    (folder / f"{name}.py").write_text(source.replace("{ns}", name))
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return name


@pytest.fixture()
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return _module(FACTORY, tmp_path, monkeypatch)


def test_run_module_with_inputs_per_size(factories: str, capsys: Any) -> None:
    status, text, _ = _run(
        capsys, "run", "--module", f"{factories}:sized", "--backend", "eager",
        "--sizes", "3,7", "--cache-dir", "cache",
    )  # fmt: skip
    assert status == 0, text
    assert text.startswith(f"stitch run --module {factories}:sized: Sequential")
    splits = [r[2] for r in _pieces(text) if r[1] == "split"]
    assert splits == ["0", "1"]  # each block's attention
    assert _checked(text) == [["3", "yes"], ["7", "yes"]]
    assert "graph 2" not in text  # one graph for both sizes


def test_run_module_with_fixed_inputs_and_kwargs(factories: str, capsys: Any) -> None:
    argv = ["run", "--module", f"{factories}:with_kwargs", "--backend", "eager"]
    status, text, _ = _run(capsys, *argv, "--cache-dir", "cache")
    assert status == 0, text
    assert _checked(text) == [["5", "yes"]]  # dim 0 of its first tensor
    assert len([r for r in _pieces(text) if r[1] == "split"]) == 1
    # One fixed forward: sizes given are refused, not ignored.
    status, _, err = _run(capsys, *argv, "--sizes", "3,4")
    assert status == 1
    assert "--sizes needs inputs(size)" in err


def test_inputs_per_size_with_kwargs(factories: str) -> None:
    choice = _resolve("--module", f"{factories}:sized_kwargs", "--sizes", "2,5")
    assert [(c.size, c.args[0].shape[0]) for c in choice.calls] == [(2, 2), (5, 5)]
    assert all(set(c.kwargs) == {"scale"} for c in choice.calls)
    assert not choice.model.training  # put in eval mode
    with torch.no_grad():
        (out,) = choice.eager(choice.calls[1])
    assert out.shape == (5, 16)


def test_run_reports_a_model_that_differs_from_eager(
    factories: str, capsys: Any
) -> None:
    # A forward that draws random numbers differs from itself: the check fails.
    status, text, _ = _run(
        capsys, "run", "--module", f"{factories}:noisy", "--backend", "eager",
        "--cache-dir", "cache",
    )  # fmt: skip
    assert status == 1, text
    assert _checked(text) == [["4", "NO"]]
    assert "1 size(s) differ from eager beyond tolerance" in text


def test_outputs_agree_within_their_dtype() -> None:
    from stitch.runtime.cli.model_choice import ModelChoice

    x = torch.linspace(-1, 1, 64)
    off = x + 1e-2
    # 1e-2 is within bfloat16's tolerance (3e-2), not float32's (1e-4).
    assert ModelChoice.agree([x.bfloat16()], [off.bfloat16()])[1]
    err, ok = ModelChoice.agree([x], [off])
    assert not ok and err == pytest.approx(1e-2, rel=1e-3)
    assert ModelChoice.agree([x, x], [x, x]) == (0.0, True)
    # Every output counts: a second one that differs fails the forward.
    assert not ModelChoice.agree([x, x], [x, off])[1]
    assert ModelChoice.agree([x], [x[:-1]]) == (float("inf"), False)
    ids = torch.arange(4)
    assert ModelChoice.agree([ids], [ids + 1]) == (float("inf"), False)
    assert not ModelChoice.agree([x], [x, x])[1]


# -- errors: one line each, naming the file or the name --------------------------------


# A progress bar (transformers' "Loading weights: 100%|...") is no error line.
PROGRESS = re.compile(r"\d+%\|")


def _error(capsys: Any, *argv: str) -> str:
    status, _, err = _run(capsys, "run", *argv, "--backend", "eager")
    lines = [ln for ln in err.splitlines() if ln.strip() and not PROGRESS.search(ln)]
    assert status == 1, err
    assert len(lines) == 1 and lines[0].startswith("stitch run: error: "), err
    return lines[0]


def _broken(checkpoint: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir(parents=True)
    for f in checkpoint.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_model_folder_errors(checkpoint: Path, tmp_path: Path, capsys: Any) -> None:
    missing = tmp_path / "nowhere"
    assert "no such folder" in _error(capsys, "--model", str(missing))
    folder = _broken(checkpoint, tmp_path)

    (folder / "model.safetensors").rename(tmp_path / "weights")
    line = _error(capsys, "--model", str(folder))
    assert f"--model {folder}: no weights (no *.safetensors file)" in line

    data = (tmp_path / "weights").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    line = _error(capsys, "--model", str(folder))
    assert f"{folder / 'model.safetensors'} is not a readable safetensors file" in line
    assert "incomplete metadata" in line

    (folder / "model.safetensors").write_bytes(data)
    (folder / "config.json").unlink()
    assert f"--model {folder}: no config.json" in _error(capsys, "--model", str(folder))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"hidden_size": 64}, "is not a transformers config: it has no 'model_type'"),
        (
            {"model_type": "nonesuch"},
            "model_type 'nonesuch' is unknown to transformers",
        ),
        ("{not json", "is not readable JSON"),
    ],
)
def test_model_config_errors(
    checkpoint: Path, tmp_path: Path, capsys: Any, config: Any, message: str
) -> None:
    folder = _broken(checkpoint, tmp_path)
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "config.json").write_text(text)
    line = _error(capsys, "--model", str(folder))
    assert f"{folder / 'config.json'}" in line and message in line, line


def test_model_weight_errors(
    llama: torch.nn.Module, checkpoint: Path, tmp_path: Path, capsys: Any
) -> None:
    from safetensors.torch import load_file, save_file

    sharded = _save(llama, tmp_path / "sharded", max_shard_size="100KB")
    shard = sorted(sharded.glob("model-*.safetensors"))[1]
    shard.unlink()
    line = _error(capsys, "--model", str(sharded))
    assert f"names 1 missing shard(s): {shard}" in line

    folder = _broken(checkpoint, tmp_path)
    weights = load_file(folder / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    line = _error(capsys, "--model", str(folder))
    assert (
        "the weights lack 1 of LlamaForCausalLM's parameters (lm_head.weight)" in line
    )


def test_option_errors(checkpoint: Path, capsys: Any) -> None:
    assert "--device applies to --model only" in _error(
        capsys, "--hf", "llama", "--device", "cpu"
    )
    assert "--layers applies to --example and --hf" in _error(
        capsys, "--model", str(checkpoint), "--layers", "3"
    )


BAD_FACTORIES = """
import torch

broken_import = None


def bare():
    return torch.nn.Linear(2, 2)


def four():
    return torch.nn.Linear(2, 2), (), {}, None


def no_inputs():
    return torch.nn.Linear(2, 2), ()


def not_a_model():
    return "model", (torch.ones(2),)


def raises():
    raise ValueError("no such size")


@torch.library.custom_op("{ns}::opaque", mutates_args=())
def opaque(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


class Opaque(torch.nn.Module):
    def forward(self, x):
        return opaque(x) + 1


def untraceable():
    return Opaque(), (torch.ones(3),)


class Silent(torch.nn.Module):
    def forward(self, x):
        return None


def silent():
    return Silent(), (torch.ones(3),)


def wrong_width():
    return torch.nn.Linear(2, 2), (torch.ones(3, 5),)


def bare_input():
    return torch.nn.Linear(2, 2), lambda n: torch.ones(n, 2)
"""


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("bare", "bare() returned Linear; expected (model, args)"),
        ("four", "four() returned a tuple of 4; expected (model, args)"),
        ("no_inputs", "no_inputs() returned no inputs (no tensor among its args"),
        ("not_a_model", "returned a str as its model; expected a torch.nn.Module"),
        ("raises", "raises() raised ValueError: no such size"),
        ("missing", "has no attribute 'missing'"),
        ("broken_import", "broken_import is a NoneType, not a function"),
        ("silent", "Silent returns no tensor to compare"),
        ("bare_input", "inputs(1) gave a Tensor as its args; expected a tuple (one"),
        (
            "wrong_width",
            # torch's own words follow; 2.15 begins them with "addmm: ".
            "Linear fails on its own (eager) on the inputs of size 3: RuntimeError: ",
        ),
    ],
)
def test_factory_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    factory: str,
    message: str,
) -> None:
    name = _module(BAD_FACTORIES, tmp_path, monkeypatch)
    line = _error(capsys, "--module", f"{name}:{factory}")
    assert f"--module {name}:{factory}: " in line and message in line, line
    if factory == "wrong_width":
        assert "mat1 and mat2 shapes cannot be multiplied (3x5 and 2x2)" in line, line
    if factory == "missing":
        assert str(tmp_path / f"{name}.py") in line  # the file it looked in


def test_module_import_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    line = _error(capsys, "--module", "no_such_module_i59:build")
    assert "no module named 'no_such_module_i59'" in line and str(tmp_path) in line
    (tmp_path / "imports_badly_i59.py").write_text("from os import nonesuch\n")
    line = _error(capsys, "--module", "imports_badly_i59:build")
    assert "importing imports_badly_i59 failed: ImportError: cannot import" in line
    assert "'nonesuch'" in line
    assert "give MODULE:FACTORY" in _error(capsys, "--module", "imports_badly_i59")


def test_a_model_dynamo_cannot_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # A custom op without a fake implementation: Dynamo stops at it.
    name = _module(BAD_FACTORIES, tmp_path, monkeypatch)
    line = _error(capsys, "--module", f"{name}:untraceable", "--cache-dir", "cache")
    assert f"--module {name}:untraceable: Dynamo cannot trace Opaque: " in line
    assert "fake" in line  # the reason's first line, and what it was about


def test_errors_are_stitch_errors(tmp_path: Path) -> None:
    # The Python entry raises them too (stitch check resolves models this way).
    with pytest.raises(StitchModelError, match="no such folder"):
        _resolve("--model", str(tmp_path / "nowhere"))
