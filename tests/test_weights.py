"""A model's load for serving (stitch.runtime.weights): the same numbers as the old load.

The model is built with its parameters on the meta device and no init, its
weights read on threads into the tensors they end in; nothing may stay on the
meta device, tied weights stay tied, computed buffers are computed, and the
outputs are exactly those of the load it replaces.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from stitch.core.errors import StitchModelError
from stitch.runtime.examples import LlamaConfig, LlamaModel, build_llama, llama_inputs
from stitch.runtime.weights import (
    Timeline,
    build_on_meta,
    load_model,
    place,
    read_index,
    start_reading,
)
from stitch.runtime.weights import read as weights_read

CFG = LlamaConfig(
    num_layers=2, hidden_size=64, num_heads=4, intermediate_size=96, vocab_size=200,
    max_seqs=8, max_len=16, dtype=torch.bfloat16,
)  # fmt: skip
CACHES = ("k_cache", "v_cache")


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(
        [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]
    )


def _on_meta(model: nn.Module) -> list[str]:
    return [name for name, t in _tensors(model).items() if t.is_meta]


def _save_example(model: nn.Module, path: Path) -> Path:
    """What a serving process saves of the example llama (as bench/
    gpu_serving_model.save_weights does): every tensor but the KV caches."""
    state = {
        name: t.detach().contiguous()
        for name, t in _tensors(model).items()
        if name.rpartition(".")[2] not in CACHES
    }
    save_file(state, str(path))
    return path


def _old_restart(path: Path) -> LlamaModel:
    """The load it replaces: built in its dtype (a random init), then the
    file's tensors copied in, the caches zeroed again."""
    from safetensors.torch import load_file

    default = torch.get_default_dtype()
    torch.set_default_dtype(CFG.dtype)
    try:
        model = LlamaModel(CFG).to(CFG.dtype)
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        for name, t in load_file(str(path)).items():
            owner, _, leaf = name.rpartition(".")
            getattr(model.get_submodule(owner), leaf).copy_(t)
        model.reset_kv_caches()
    return model.eval()


@pytest.fixture(scope="module")
def example_file(tmp_path_factory: Any) -> Path:
    folder = tmp_path_factory.mktemp("example")
    return _save_example(build_llama(CFG, seed=3), folder / "model.safetensors")


@pytest.mark.parametrize("threads", [1, 3])
def test_the_example_loads_as_the_old_restart(
    example_file: Path, threads: int, monkeypatch: Any
) -> None:
    # Small chunks: every tensor is read in several pieces, by several threads.
    monkeypatch.setattr(weights_read, "CHUNK", 96)
    timeline = Timeline()
    reader = start_reading(
        [str(example_file)], "cpu", threads=threads, timeline=timeline
    )
    new = load_model(lambda: LlamaModel(CFG), reader).wait()
    old = _old_restart(example_file)
    assert _on_meta(new) == []
    got, want = _tensors(new), _tensors(old)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].requires_grad == want[name].requires_grad, name
        assert torch.equal(got[name], want[name]), name
    ids, positions = llama_inputs(CFG, 5, seed=1)
    with torch.no_grad():
        assert torch.equal(new(ids, positions), old(ids, positions))
    assert {p.name for p in timeline.phases} >= {"meta build", "weight read"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_example_loads_onto_a_device_through_pinned_staging(
    example_file: Path, monkeypatch: Any
) -> None:
    # Small chunks: each thread's two staging buffers are reused many times.
    monkeypatch.setattr(weights_read, "CHUNK", 96)
    timeline = Timeline()
    reader = start_reading([str(example_file)], "cuda", threads=3, timeline=timeline)
    new = load_model(lambda: LlamaModel(CFG), reader).wait()
    old = _old_restart(example_file)
    got = _tensors(new)
    assert _on_meta(new) == []
    for name, want in _tensors(old).items():
        assert got[name].device.type == "cuda", name
        assert torch.equal(got[name].cpu(), want), name
    ran = {p.name for p in timeline.phases}
    assert {"CUDA context", "weight read", "device copy"} <= ran


def test_computed_buffers_are_computed_and_caches_zeroed(tmp_path: Path) -> None:
    """A file without the rotary frequencies: the build computes them (on
    meta they would be lost); the KV caches are the constructor's, zeroed."""
    model = build_llama(CFG, seed=3)
    state = {
        n: t for n, t in _tensors(model).items() if n.rpartition(".")[2] not in
        (*CACHES, "inv_freq")
    }  # fmt: skip
    save_file(state, str(tmp_path / "w.safetensors"))
    reader = start_reading([str(tmp_path / "w.safetensors")], "cpu")
    new = load_model(lambda: LlamaModel(CFG), reader).wait()
    assert _on_meta(new) == []
    attn = new.layers[1].self_attn
    torch.testing.assert_close(
        attn.inv_freq, LlamaModel(CFG).layers[1].self_attn.inv_freq
    )
    assert attn.inv_freq.dtype == torch.float32
    assert not attn.k_cache.any() and attn.k_cache.dtype == CFG.dtype


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def test_tied_weights_stay_tied(tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = _Tied()
    save_file(
        {"embed.weight": saved.embed.weight.detach()}, str(tmp_path / "t.safetensors")
    )
    new = load_model(
        _Tied, start_reading([str(tmp_path / "t.safetensors")], "cpu")
    ).wait()
    assert new.head.weight is new.embed.weight
    ids = torch.arange(10)
    with torch.no_grad():
        assert torch.equal(new(ids), saved(ids))


def test_the_build_runs_no_init_and_imports_no_dynamo() -> None:
    """The meta build skips initializers (whose meta kernels import Dynamo),
    and ``import stitch.runtime.weights`` imports no part of the pipeline."""
    code = (
        "import sys, torch\n"
        "from stitch.runtime.weights import build_on_meta\n"
        "from stitch.runtime.examples import LlamaConfig, LlamaModel\n"
        "m = build_on_meta(lambda: LlamaModel(LlamaConfig()))\n"
        "assert all(p.is_meta for p in m.parameters())\n"
        "assert not any(b.is_meta for b in m.buffers())\n"
        "print(sorted(n for n in ('torch._dynamo', 'stitch.runtime.pipeline.api',\n"
        "    'stitch.runtime.saved.aot', 'stitch.runtime.check') if n in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_place_names_what_does_not_fit() -> None:
    model = build_on_meta(lambda: nn.Linear(4, 3))
    with pytest.raises(StitchModelError, match=r"no parameter or buffer named extra"):
        place(model, {"weight": torch.zeros(3, 4), "extra": torch.zeros(1)})
    with pytest.raises(
        StitchModelError,
        match=r"weight: the weights hold shape \[4, 3\], the model \[3, 4\]",
    ):
        place(model, {"weight": torch.zeros(4, 3)})
    with pytest.raises(
        StitchModelError, match=r"neither in the weights nor filled \(bias\)"
    ):
        place(model, {"weight": torch.zeros(3, 4)})
    place(
        model, {"weight": torch.ones(3, 4)}, lambda name, meta: torch.zeros(meta.shape)
    )
    assert model.bias.sum() == 0 and model.weight.sum() == 12
    assert isinstance(model.bias, nn.Parameter)


def test_a_truncated_file_is_named(example_file: Path, tmp_path: Path) -> None:
    data = example_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 10])
    with pytest.raises(StitchModelError, match=rf"{cut}: tensor '.*' .* lies at bytes"):
        read_index([str(cut)])
    cut.write_bytes(b"\xff" * 16)
    with pytest.raises(StitchModelError, match=rf"{cut} is not a readable safetensors"):
        read_index([str(cut)])


# -- transformers' checkpoints (load_checkpoint) -------------------------------------


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory: Any) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    folder = tmp_path_factory.mktemp("tied_llama")
    model.save_pretrained(folder, max_shard_size="100KB")
    return folder


def test_a_checkpoint_loads_as_from_pretrained_did(tied_llama: Path) -> None:
    import transformers

    from stitch.runtime.hf.checkpoint import load_checkpoint

    assert len(list(tied_llama.glob("*.safetensors"))) > 1  # shards, read together
    old = transformers.AutoModelForCausalLM.from_pretrained(tied_llama, dtype="auto")
    new = load_checkpoint(str(tied_llama)).model
    assert _on_meta(new) == []
    assert new.lm_head.weight is new.model.embed_tokens.weight
    got, want = _tensors(new), _tensors(old.eval())
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]), name
    assert new.generation_config.to_dict() == old.generation_config.to_dict()
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        assert torch.equal(new(ids).logits, old(ids).logits)
