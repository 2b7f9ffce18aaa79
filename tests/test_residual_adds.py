"""A piece's residual adds stay out of its GEMMs (NOTE: [a piece's residual add
stays out of its GEMM], runtime/passes/residual_addmm.py).

On CUDA an ``addmm`` whose addend has the product's own shape copies the addend
into its output before the GEMM.  Inductor's post-grad patterns fold both
residual adds of a layer into such addmms in a middle piece of the example
llama, and none of the whole graph's; Stitch's own pass unfolds them.  The
structure is checked on Inductor's post-grad graphs of the split decode step
as they are for CUDA tensors (NOTE: [post-grad graphs for CUDA without one]):
no Inductor codegen, no GPU.  One compile of the 2-layer example llama, with
the rewrite run on the CPU, checks the numbers.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.fx as fx
from torch._inductor.compile_fx import compile_fx
from torch._inductor.fx_passes.post_grad import post_grad_passes
from torch._inductor.virtualized import V
from torch._subclasses.fake_tensor import FakeTensor

from stitch.runtime import CompilationConfig
from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs
from stitch.runtime.passes.residual_addmm import UnfuseResidualAddmm
from stitch.runtime.pipeline.artifact_source import config_adapter
from stitch.runtime.pipeline.prebuilt.load import (
    PREBUILT_DIR,
    PREBUILT_SUFFIX,
    read_record,
)
from stitch.runtime.pipeline.split_policy import SplitPolicy

from backend_support import (
    INDUCTOR_TOL,
    TINY,
    compile_model,
    eager_and_compiled,
    model_for,
)

pytestmark = pytest.mark.usefixtures("dynamo_state")

aten = torch.ops.aten

# The profiled model's dtype (bench/gpu_serving.py); 2 layers: one middle piece.
EXAMPLE = LlamaConfig(num_layers=2, dtype=torch.bfloat16)


def dynamo_graph(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> fx.GraphModule:
    """Dynamo's graph of ``fn(*args, **kwargs)``: for a model, of one decode step
    (static sizes, as a FULL CUDA graph of batch 1 runs it)."""
    graphs: list[fx.GraphModule] = []

    def keep(gm: fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(fn, backend=keep, fullgraph=True, dynamic=False)(*args, **kwargs)
    torch._dynamo.reset()
    return graphs[0]


def pieces(gm: fx.GraphModule) -> list[fx.GraphModule]:
    """The compiled (non-splitting) pieces of ``gm``, split as Stitch splits it."""
    policy = SplitPolicy.from_config(CompilationConfig())
    policy.prepare(gm)
    _, items = policy.split(gm)
    return [item.graph for item in items if not item.is_splitting_graph]


# NOTE: [post-grad graphs for CUDA without one]
# Whether Inductor folds ``add(mm(a, b), x)`` into an addmm depends on the
# device of ``x``'s fake value (``should_prefer_unfused_addmm``: only on a GPU
# may it leave the add out), and so does Stitch's pass.  A CPU-only torch makes
# fake CUDA tensors but cannot trace a model on them, so Inductor's front end
# traces the graph on the CPU, and its fake values and device arguments are
# recast to CUDA right before the post-grad passes, which read nothing else.
def post_grad_graph(gm: fx.GraphModule, cuda: bool = True) -> fx.GraphModule:
    """Inductor's post-grad graph of ``gm`` for CUDA tensors (else for the CPU's),
    under the Inductor options a piece is compiled with (Stitch's passes included)."""
    graphs: list[fx.GraphModule] = []

    def stop_after_post_grad(
        graph: fx.GraphModule, example_inputs: Any, **_: Any
    ) -> Callable[..., Any]:
        mode = on_cuda(graph) if cuda else example_inputs[0].fake_mode
        with V.set_fake_mode(mode):
            post_grad_passes(graph, is_inference=True)
        graphs.append(graph)
        return lambda *args: None

    inputs = [n.meta["example_value"] for n in gm.graph.find_nodes(op="placeholder")]
    options = config_adapter(CompilationConfig()).inductor_config()
    with torch.no_grad():
        compile_fx(
            copy.deepcopy(gm),
            inputs,
            inner_compile=stop_after_post_grad,
            config_patches=options,
        )
    return graphs[0]


def on_cuda(graph: fx.GraphModule) -> Any:
    """Recast ``graph``'s CPU fake values and device arguments to CUDA; its fake mode."""
    vals = [n.meta.get("val") for n in graph.graph.nodes]
    mode = next(v.fake_mode for v in vals if isinstance(v, FakeTensor))
    cuda = torch.device("cuda")

    def recast(v: Any) -> Any:
        if isinstance(v, FakeTensor) and v.device.type == "cpu":
            with mode:
                return torch.empty_strided(
                    v.shape, v.stride(), dtype=v.dtype, device=cuda
                )
        if isinstance(v, torch.device) and v.type == "cpu":
            return cuda
        return v

    for node in graph.graph.nodes:
        if "val" in node.meta:
            node.meta["val"] = fx.node.map_aggregate(node.meta["val"], recast)
        node.args = fx.node.map_aggregate(node.args, recast)
        node.kwargs = fx.node.map_aggregate(node.kwargs, recast)
    return mode


def traced_from(node: fx.Node) -> str | None:
    """The name of the model's call ``node`` was traced from, where it has one
    (a pattern's replacement has none on torch 2.11, the add's from 2.13)."""
    stack = node.meta.get("source_fn_stack")
    return stack[-1][0] if stack else None


def addmms(graph: fx.GraphModule) -> list[fx.Node]:
    return graph.graph.find_nodes(op="call_function", target=aten.addmm.default)


def copying_addmms(graph: fx.GraphModule) -> list[str]:
    """The addmms that ATen's CUDA addmm makes copy their addend: those whose
    addend has the output's own shape (a 1-D bias goes through cuBLASLt's
    epilogue instead)."""
    return [
        f"{n.name} adds {n.args[0].name} {tuple(n.args[0].meta['val'].shape)}"
        for n in addmms(graph)
        if n.args[0].meta["val"].shape == n.meta["val"].shape
    ]


def residual_adds(graph: fx.GraphModule) -> int:
    """The adds of a GEMM's output, folded or not (what the test looks at)."""
    return sum(
        n.target is aten.addmm.default
        or (
            n.target is aten.add.Tensor
            and any(getattr(a, "target", None) is aten.mm.default for a in n.args)
        )
        for n in graph.graph.nodes
    )


@pytest.mark.slow
def test_example_llama_pieces_copy_no_residual() -> None:
    model = build_llama(EXAMPLE)
    gm = dynamo_graph(model, *llama_inputs(EXAMPLE, 1))
    graphs = {"whole graph": post_grad_graph(gm)}
    graphs.update(
        (f"piece {i}", post_grad_graph(piece)) for i, piece in enumerate(pieces(gm))
    )
    # Two residual adds per layer, in the whole graph and across the pieces.
    adds = {name: residual_adds(g) for name, g in graphs.items()}
    assert adds["whole graph"] == 2 * EXAMPLE.num_layers
    assert sum(adds.values()) == 4 * EXAMPLE.num_layers, adds
    copying = {name: copying_addmms(g) for name, g in graphs.items()}
    assert copying == {name: [] for name in graphs}


@pytest.mark.slow
def test_transformers_llama_pieces_copy_no_residual() -> None:
    # Its linears run on [tokens, 1, hidden]: a view sits between each mm and
    # its residual add, so Inductor folds none, in the pieces or not.
    pytest.importorskip("transformers")
    from stitch.runtime.hf.serving import build_serving_llama, serving_inputs

    model = build_serving_llama(
        vocab_size=128,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=4,
        intermediate_size=128,
        max_seqs=4,
        max_len=32,
        dtype=torch.bfloat16,
    )
    gm = dynamo_graph(model, **serving_inputs(model, 1))
    for i, piece in enumerate(pieces(gm)):
        assert copying_addmms(post_grad_graph(piece)) == [], f"piece {i}"


def sums(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """A residual sum, a biased product, and an addmm written as one."""
    return x + a @ b, bias + a @ b, torch.addmm(x, a, b)


def test_only_inductors_residual_folds_are_unfolded() -> None:
    args = (torch.randn(4, 8), torch.randn(4, 16), torch.randn(16, 8), torch.randn(8))
    gm = dynamo_graph(sums, *args)
    graph = post_grad_graph(gm)
    # Inductor folds both adds (their sums are outputs); Stitch unfolds the
    # residual's, and leaves the bias's and the written addmm.
    kept = {tuple(n.args[0].meta["val"].shape): traced_from(n) for n in addmms(graph)}
    assert sorted(kept) == [(4, 8), (8,)]
    # The written addmm is the one traced from torch.addmm, on every torch.
    assert kept[(4, 8)] == "addmm" and kept[(8,)] != "addmm"
    assert residual_adds(graph) == 3
    # On the CPU Inductor folds all of them, and Stitch's pass leaves them.
    assert len(addmms(post_grad_graph(gm, cuda=False))) == 3


def test_own_post_grad_pass_replaces_stitchs() -> None:
    default = config_adapter(CompilationConfig()).inductor_config()
    hook = default["post_grad_custom_post_pass"]
    assert [type(p) for p in hook.passes] == [UnfuseResidualAddmm]
    own = {"post_grad_custom_post_pass": None}
    config = CompilationConfig(inductor_compile_config=own)
    assert config_adapter(config).inductor_config() == own


def generated(entry: str) -> str:
    """The code Inductor generated for the entry's pieces (their prebuilt records)."""
    records = sorted(Path(entry, PREBUILT_DIR).glob(f"*{PREBUILT_SUFFIX}"))
    assert records, f"no prebuilt records in {entry}"
    return "\n".join(read_record(str(r))["wrapper"] for r in records)


@pytest.mark.slow
def test_unfolded_residual_adds_keep_the_numbers(tmp_path: Path) -> None:
    # The rewrite run on the CPU too: Inductor's CPU code adds the residuals.
    rewrite = UnfuseResidualAddmm(devices=("cpu", "cuda"))
    config = CompilationConfig(
        cache_dir=str(tmp_path), inductor_passes=[rewrite], tiered_start=False
    )
    model = model_for(TINY)
    backend, fn = compile_model(model, config)
    ref, out = eager_and_compiled(model, fn, TINY, 8)
    torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    code = generated(backend.compiled[0].cache_dir)
    assert re.findall(r"extern_kernels\.addmm\(", code) == []
    assert re.findall(r"extern_kernels\.mm\(", code)


def test_stitchs_own_passes_enter_every_inductor_compile_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A piece compiled before one of Stitch's own passes changed must not be
    # loaded after: the passes enter the key every compile key shares.
    from stitch.runtime import CompilationConfig
    from stitch.runtime.passes import own
    from stitch.runtime.passes.residual_addmm import UnfuseResidualAddmm
    from stitch.runtime.pipeline.artifact_source import config_adapter, key_salt

    inductor = config_adapter(CompilationConfig())
    before = key_salt(inductor)

    class Changed(UnfuseResidualAddmm):
        def options(self) -> dict[str, Any]:
            return {**super().options(), "changed": True}

    monkeypatch.setattr(own, "STITCH_PASSES", (Changed,))
    assert key_salt(inductor) != before
    # The eager backend runs no pass: its keys hold its name alone.
    assert key_salt(config_adapter(CompilationConfig(backend="eager"))) == "eager"
