"""``stitch check`` on the command line, and the command ``stitch run`` prints
when its numbers differ from eager."""

from __future__ import annotations

import shlex

import pytest
import torch

# See NOTE: [many compiles of one forward] in conftest.py.
pytestmark = pytest.mark.usefixtures("dynamo_state")


def test_stitch_check_prints_the_pieces_and_exits_0_on_a_correct_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from stitch.runtime.cli.main import main

    torch._dynamo.reset()
    status = main(
        ["check", "--example", "two_layer", "--backend", "eager", "--sizes", "1,8"]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "stitch check --example two_layer: 2 layers, backend eager" in out
    rows = [line for line in out.splitlines() if line.startswith("| submod_")]
    assert [r.split("|")[1].strip() for r in rows] == [
        "submod_0",
        "submod_2",
        "submod_4",
    ]
    assert all(r.rstrip(" |").endswith("yes") for r in rows)
    assert out.rstrip().endswith(
        "every piece agrees with its uncompiled form within tolerance"
    )


def test_a_failed_run_names_the_check_command_with_its_model_options() -> None:
    from stitch.runtime.cli.main import build_parser
    from stitch.runtime.cli.run_cmd import check_command

    run = build_parser().parse_args(
        [
            "run",
            "--example",
            "llama",
            "--layers",
            "4",
            "--sizes",
            "1,8",
            "--backend",
            "eager",
            "--cache-dir",
            "/tmp/a b",
            "--compile-sizes",
            "8",
            "--tiered",
        ]
    )
    command = check_command(run)
    assert command == (
        "stitch check --example llama --backend eager --layers 4 --sizes 1,8 "
        "--cache-dir '/tmp/a b' --compile-sizes 8"
    )
    # The command parses, and names the same model and options.
    check = build_parser().parse_args(shlex.split(command)[1:])
    for name in ("example", "layers", "sizes", "backend", "cache_dir"):
        assert getattr(check, name) == getattr(run, name)
    hf = build_parser().parse_args(["run", "--hf", "gpt2", "--attn", "sdpa"])
    assert check_command(hf) == "stitch check --hf gpt2 --attn sdpa"


def test_a_failed_run_prints_the_check_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from stitch.runtime.cli.main import build_parser
    from stitch.runtime.cli.run_cmd import suggest_check

    args = build_parser().parse_args(["run", "--example", "llama", "--sizes", "3"])
    assert suggest_check(args, 0) == 0
    assert capsys.readouterr().out == ""
    assert suggest_check(args, 1) == 1
    assert capsys.readouterr().out == (
        "\nto find the piece that changed the numbers, run:\n"
        "  stitch check --example llama --sizes 3\n"
    )
