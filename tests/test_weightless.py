"""A compile without weights (NOTE: [a compile without weights],
runtime/saved/weightless.py): built on the meta device, compiled into the
cache; a start with the real weights loads every piece and compiles nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stitch.core import StitchConfigError, StitchRuntimeError
from stitch.runtime import CompilationConfig, StitchBackend, aot_compile
from stitch.runtime.cli.compile_job import compile_example, compile_hf, hf_config
from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs
from stitch.runtime.saved.weightless import (
    compile_without_weights,
    trace_without_weights,
)

from backend_support import INDUCTOR_TOL, counting

pytestmark = pytest.mark.slow


class _Out:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def test_an_example_compiled_without_weights_starts_warm_with_them(
    tmp_path: Path,
) -> None:
    out = _Out()
    compile_example("llama", layers=2, cache_dir=str(tmp_path), out=out)
    assert "compiled without weights" in out.text
    cfg = LlamaConfig(num_layers=2)
    model = build_llama(cfg)
    config = CompilationConfig(
        cache_dir=str(tmp_path), max_num_batched_tokens=cfg.max_seqs
    )
    with counting() as deltas, torch.no_grad():
        compiled = aot_compile(
            model, llama_inputs(cfg, 4, seed=4), config, dynamic_dims={0: [0], 1: [0]}
        )
        args = llama_inputs(cfg, 6, seed=6)
        model.reset_kv_caches()
        want = model(*args)
        model.reset_kv_caches()
        got = compiled(*args)
    assert compiled.warm
    assert deltas.get("num_inductor_compiles", 0) == 0
    torch.testing.assert_close(got, want, **INDUCTOR_TOL)


def test_a_transformers_config_compiled_without_weights_loads_every_piece(
    tmp_path: Path,
) -> None:
    pytest.importorskip("transformers")
    from stitch.runtime.hf import build_model, example_inputs, output_tensor

    (tmp_path / "ckpt").mkdir()
    hf_config("llama", None, 2).save_pretrained(tmp_path / "ckpt")
    out = _Out()
    compile_hf(
        None,
        str(tmp_path / "ckpt" / "config.json"),
        layers=2,
        batch=2,
        cache_dir=str(tmp_path / "cache"),
        out=out,
    )
    assert "2 graphs compiled without weights" in out.text
    model = build_model("llama", layers=2)
    # Compiles counted (none): in the backend call.
    config = CompilationConfig(cache_dir=str(tmp_path / "cache"), tiered_start=False)
    backend = StitchBackend(config)
    compiled = torch.compile(model, backend=backend, dynamic=True)
    with counting() as deltas, torch.no_grad():
        for n in (1, 5):
            kwargs = example_inputs("llama", 2, n, seed=n)
            torch.testing.assert_close(
                output_tensor("llama", compiled(**kwargs)),
                output_tensor("llama", model(**kwargs)),
                **INDUCTOR_TOL,
            )
    assert deltas.get("num_inductor_compiles", 0) == 0
    assert len(backend.compiled) == 2 and all(c.warm for c in backend.compiled)


def test_a_model_that_does_not_build_is_named(tmp_path: Path) -> None:
    def broken() -> torch.nn.Module:
        raise ValueError("hidden_size must be even")

    with pytest.raises(StitchConfigError, match="broken does not build.*hidden_size"):
        compile_without_weights(broken, (), CompilationConfig(cache_dir=str(tmp_path)))


def test_a_config_json_that_is_not_a_config_is_named(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    with pytest.raises(StitchConfigError, match=str(tmp_path / "config.json")):
        hf_config(None, str(tmp_path / "config.json"), 2)


class ReadsItsWeight(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale.sum() > 0:  # a branch on a weight's value
            return x * self.scale
        return x


def test_a_forward_that_reads_its_weights_cannot_compile_without_them(
    tmp_path: Path,
) -> None:
    config = CompilationConfig(cache_dir=str(tmp_path))
    with pytest.raises(StitchRuntimeError, match="ReadsItsWeight.*without its weights"):
        trace_without_weights(
            ReadsItsWeight, [{"x": torch.ones(3, 4)}], config, name="ReadsItsWeight"
        )
