"""Custom Inductor passes per piece (``CompilationConfig.inductor_passes``) and the RMSNorm fusion.

The pass interface and the fusion's graph rewrite are checked on traced graphs
(fast, no Inductor); one 1-layer model is compiled with the pass to check that
every compiled piece calls the fused op, that the pass's uuid keys the cache
(unchanged: hit; changed: recompile) and that a failing pass is named in the
error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.fx as fx
from torch.fx.experimental.proxy_tensor import make_fx

from stitch.core.errors import StitchConfigError, StitchRuntimeError
from stitch.runtime import CompilationConfig
from stitch.runtime.examples import LlamaConfig
from stitch.runtime.passes import InductorPass
from stitch.runtime.passes.rms_norm import RMS_NORM_OP, FuseRMSNorm
from stitch.runtime.pipeline.prebuilt.load import (
    PREBUILT_DIR,
    PREBUILT_SUFFIX,
    read_record,
)

from backend_support import (
    INDUCTOR_TOL,
    compile_model,
    counting,
    eager_and_compiled,
    model_for,
)

ONE_LAYER = LlamaConfig(num_layers=1)
# input_layernorm, post_attention_layernorm and the final norm.
NORMS = 3
COMPILED_PIECES = 2


def rms_norm_chain(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    var = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(var + 1e-5)).to(x.dtype) * w


def traced(fn: Any, *args: torch.Tensor) -> fx.GraphModule:
    return make_fx(fn)(*args)


def fused_ops(gm: fx.GraphModule) -> int:
    return sum(n.target is RMS_NORM_OP for n in gm.graph.nodes)


# -- the pass on traced graphs ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fuse_rms_norm_matches_eager(dtype: torch.dtype) -> None:
    x, w = torch.randn(5, 16, dtype=dtype), torch.randn(16, dtype=dtype)
    gm = traced(rms_norm_chain, x, w)
    fuse = FuseRMSNorm()
    fuse(gm.graph)
    gm.recompile()
    assert fuse.fused == 1
    assert fused_ops(gm) == 1
    # Only the fused op and the placeholders/output are left.
    assert [n.op for n in gm.graph.nodes] == [
        "placeholder",
        "placeholder",
        "call_function",
        "output",
    ]
    torch.testing.assert_close(gm(x, w), rms_norm_chain(x, w), rtol=0, atol=0)


def test_fuse_rms_norm_keeps_a_chain_whose_intermediate_is_used() -> None:
    def norm_and_scale(
        x: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inv = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
        return x * inv * w, inv

    x, w = torch.randn(5, 16), torch.randn(16)
    gm = traced(norm_and_scale, x, w)
    fuse = FuseRMSNorm()
    fuse(gm.graph)
    assert fuse.fused == 0
    assert fused_ops(gm) == 0


# -- configuration ---------------------------------------------------------------------


class Tagged(InductorPass):
    """A pass that rewrites nothing; its tag is an option, so it changes the uuid."""

    def __init__(self, tag: str = "a") -> None:
        self.tag = tag

    def __call__(self, graph: fx.Graph) -> None:
        pass

    def options(self) -> dict[str, Any]:
        return {"tag": self.tag}


def test_pass_uuids_enter_the_config_hash() -> None:
    base = CompilationConfig()
    assert CompilationConfig(inductor_passes=[]).compute_hash() == base.compute_hash()
    with_a = CompilationConfig(inductor_passes=[Tagged("a")]).compute_hash()
    assert with_a != base.compute_hash()
    assert CompilationConfig(inductor_passes=[Tagged("a")]).compute_hash() == with_a
    assert CompilationConfig(inductor_passes=[Tagged("b")]).compute_hash() != with_a
    assert Tagged("a").uuid() != FuseRMSNorm().uuid()


@pytest.mark.parametrize(
    ("passes", "message"),
    [
        ("FuseRMSNorm", "must be a list"),
        ([object()], "is not callable"),
        ([lambda graph: None], "has no uuid"),
    ],
    ids=["not-a-list", "not-callable", "no-uuid"],
)
def test_config_rejects_bad_passes(passes: Any, message: str) -> None:
    with pytest.raises(StitchConfigError, match=message) as info:
        CompilationConfig(inductor_passes=passes)
    assert "inductor_passes" in str(info.value)


@pytest.mark.parametrize(
    "field", ["inductor_compile_config", "compile_sizes_inductor_config"]
)
def test_config_rejects_passes_beside_inductor_custom_pass(field: str) -> None:
    with pytest.raises(
        StitchConfigError,
        match="cannot be combined with an Inductor option 'post_grad_custom_post_pass'",
    ):
        CompilationConfig(
            inductor_passes=[FuseRMSNorm()],
            **{field: {"post_grad_custom_post_pass": None}},
        )


# -- in every compiled piece -------------------------------------------------------------


def config(tmp: Path, passes: list[Any]) -> CompilationConfig:
    """Every piece compiled in the backend call (``tiered_start=False``): the
    tests count the compiles, read the entry and expect a pass's error there."""
    return CompilationConfig(
        cache_dir=str(tmp), inductor_passes=passes, tiered_start=False
    )


def compile_and_run(
    cfg: CompilationConfig,
) -> tuple[dict[str, int], torch.Tensor, torch.Tensor, str]:
    """Deltas, eager and compiled outputs, and the cache entry the compile used."""
    torch._dynamo.reset()
    model = model_for(ONE_LAYER)
    backend, fn = compile_model(model, cfg)
    with counting() as deltas:
        ref, out = eager_and_compiled(model, fn, ONE_LAYER, 8)
    torch._dynamo.reset()
    return deltas, ref, out, backend.compiled[0].cache_dir


def fused_calls(entry: str) -> int:
    """Calls of the fused op in the code Inductor generated for the entry's pieces.

    Read from the pieces' prebuilt records (Inductor's wrapper source): the
    pass itself may not run again when Inductor's own cache already holds the
    rewritten graph.
    """
    records = sorted(Path(entry, PREBUILT_DIR).glob(f"*{PREBUILT_SUFFIX}"))
    assert records, f"no prebuilt records in {entry}"
    call = re.compile(r"= torch\.ops\.stitch\.rms_norm\.default\(")
    return sum(len(call.findall(read_record(str(r))["wrapper"])) for r in records)


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("passes")
    deltas, ref, out, entry = compile_and_run(config(cache, [FuseRMSNorm()]))
    return {"cache": cache, "deltas": deltas, "ref": ref, "out": out, "entry": entry}


@pytest.mark.slow
def test_pass_runs_in_every_compiled_piece(fused_run: dict[str, Any]) -> None:
    assert fused_run["deltas"]["num_inductor_compiles"] == COMPILED_PIECES
    assert fused_calls(fused_run["entry"]) == NORMS
    torch.testing.assert_close(fused_run["out"], fused_run["ref"], **INDUCTOR_TOL)


@pytest.mark.slow
def test_without_the_pass_nothing_is_fused(
    fused_run: dict[str, Any], tmp_path: Path
) -> None:
    # The same model compiled without passes: Inductor keeps its own RMSNorm kernels.
    _, ref, out, entry = compile_and_run(config(tmp_path, []))
    assert fused_calls(entry) == 0
    torch.testing.assert_close(out, ref, **INDUCTOR_TOL)


@pytest.mark.slow
def test_unchanged_pass_hits_the_cache(fused_run: dict[str, Any]) -> None:
    again = FuseRMSNorm()
    deltas, ref, out, entry = compile_and_run(config(fused_run["cache"], [again]))
    assert deltas.get("num_inductor_compiles", 0) == 0
    assert deltas["num_cache_hits"] == COMPILED_PIECES
    assert again.fused == 0  # loaded, not compiled: the pass did not run
    assert entry == fused_run["entry"]
    torch.testing.assert_close(out, ref, **INDUCTOR_TOL)


class FuseRMSNormV2(FuseRMSNorm):
    """The same rewrite under another uuid (as an edited pass would have)."""

    name = "FuseRMSNormV2"


@pytest.mark.slow
def test_changed_pass_recompiles(fused_run: dict[str, Any]) -> None:
    changed = FuseRMSNormV2()
    assert changed.uuid() != FuseRMSNorm().uuid()
    deltas, ref, out, entry = compile_and_run(config(fused_run["cache"], [changed]))
    assert deltas["num_inductor_compiles"] == COMPILED_PIECES
    assert deltas.get("num_cache_hits", 0) == 0
    assert entry != fused_run["entry"]
    assert fused_calls(entry) == NORMS
    torch.testing.assert_close(out, ref, **INDUCTOR_TOL)


class Broken(InductorPass):
    name = "BrokenPass"

    def __call__(self, graph: fx.Graph) -> None:
        raise ValueError("no rewrite today")


@pytest.mark.slow
def test_failing_pass_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:
        compile_and_run(config(tmp_path, [Tagged(), Broken()]))
    # Dynamo reports a backend's error as BackendCompilerFailed around it.
    error = getattr(info.value, "inner_exception", info.value)
    assert isinstance(error, StitchRuntimeError), repr(info.value)
    message = str(error)
    assert "Inductor pass BrokenPass" in message
    assert "no rewrite today" in message
    assert "piece submod_0" in message
