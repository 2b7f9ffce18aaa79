"""Boolean SDPA masks are made additive once, in a compiled piece (attention_masks.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from stitch.codegen.matching import OpMatcher
from stitch.runtime import CompilationConfig, StitchBackend
from stitch.runtime.config import DEFAULT_SPLITTING_OPS
from stitch.runtime.pipeline.attention_masks import additive_sdpa_masks


@pytest.fixture(autouse=True)
def dynamo_state() -> Any:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class TwoAttentions(nn.Module):
    """Two SDPA calls sharing one boolean padding mask built in the graph."""

    def forward(self, q: torch.Tensor, kv: torch.Tensor, lengths: torch.Tensor) -> Any:
        keep = torch.arange(kv.shape[-2]) < lengths[:, None, None, None]
        first = F.scaled_dot_product_attention(q, kv, kv, attn_mask=keep)
        return F.scaled_dot_product_attention(first * 2, kv, kv, attn_mask=keep)


def _inputs(batch: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(batch)
    q = torch.randn(batch, 2, 3, 8, generator=g).to(dtype)
    kv = torch.randn(batch, 2, 5, 8, generator=g).to(dtype)
    # Row 0 attends to nothing: SDPA's own conversion gives it zeros.
    lengths = torch.tensor([0, 5, 2, 4][:batch])
    return q, kv, lengths


def _captured(
    model: nn.Module, args: tuple[torch.Tensor, ...]
) -> tuple[fx.GraphModule, list[Any]]:
    """Dynamo's graph of ``model`` and the inputs it takes (in its order)."""
    graphs: list[tuple[fx.GraphModule, list[Any]]] = []

    def capture(gm: fx.GraphModule, example_inputs: Any) -> Any:
        graphs.append((gm, list(example_inputs)))
        return gm.forward

    torch.compile(model, backend=capture, fullgraph=True)(*args)
    return graphs[0]


def _sdpa_masks(gm: fx.GraphModule) -> list[Any]:
    # F.scaled_dot_product_attention is torch._C._nn's, the target Dynamo records.
    return [
        n.kwargs.get("attn_mask")
        for n in gm.graph.find_nodes(
            op="call_function", target=F.scaled_dot_product_attention
        )
    ]


def test_one_additive_mask_replaces_the_boolean_one_for_every_splitting_sdpa() -> None:
    gm, graph_args = _captured(TwoAttentions(), _inputs(4))
    before = gm(*graph_args)[0]
    (boolean,) = set(_sdpa_masks(gm))
    assert boolean.meta["example_value"].dtype == torch.bool

    assert additive_sdpa_masks(gm, OpMatcher.parse(DEFAULT_SPLITTING_OPS)) == 2

    masks = _sdpa_masks(gm)
    assert len(masks) == 2 and masks[0] is masks[1] is not boolean
    assert masks[0].meta["example_value"].dtype == torch.float32
    conversions = [n for n in gm.graph.nodes if n.target is torch.logical_not]
    assert len(conversions) == 1
    # SDPA's own values: bitwise the same output as the boolean mask gives.
    assert torch.equal(gm(*graph_args)[0], before)


def test_masks_that_are_not_boolean_cpu_masks_of_a_splitting_sdpa_stay() -> None:
    args = _inputs(4)
    gm, _ = _captured(TwoAttentions(), args)
    # SDPA not a splitting op: Inductor compiles it, conversion included.
    assert additive_sdpa_masks(gm, OpMatcher.parse(["stitch::attention"])) == 0

    class Additive(nn.Module):
        def forward(self, q: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor) -> Any:
            return F.scaled_dot_product_attention(q, kv, kv, attn_mask=bias)

    q, kv, _ = args
    gm, _ = _captured(Additive(), (q, kv, torch.zeros(4, 1, 3, 5)))
    assert additive_sdpa_masks(gm, OpMatcher.parse(DEFAULT_SPLITTING_OPS)) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stitch_runs_the_conversion_in_a_piece_and_matches_eager(
    tmp_path: Any, dtype: torch.dtype
) -> None:
    backend = StitchBackend(CompilationConfig(cache_dir=str(tmp_path)))
    model = TwoAttentions()
    compiled = torch.compile(model, backend=backend, dynamic=True)
    for batch in (4, 3):
        args = _inputs(batch, dtype)
        assert torch.equal(compiled(*args), model(*args))
    code = backend.compiled[-1].code
    # The emitted stitching passes the piece's additive mask to both calls and
    # converts nothing itself.
    assert code.count("attn_mask=keep_additive") == 2, code
    assert "logical_not" not in code and "where" not in code
