"""What a splitting SDPA is given: boolean masks made additive once, repeated
key/value heads passed unrepeated with enable_gqa (sdpa_inputs.py)."""

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
from stitch.runtime.pipeline.sdpa_inputs import (
    additive_sdpa_masks,
    unrepeated_sdpa_heads,
)


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


def _repeat(kv: torch.Tensor, n: int) -> torch.Tensor:
    # transformers' repeat_kv
    b, h, s, d = kv.shape
    return kv[:, :, None, :, :].expand(b, h, n, s, d).reshape(b, h * n, s, d)


class GroupedAttention(nn.Module):
    """A grouped-query layer: 4 query heads over 2 key/value heads, masked."""

    def __init__(self, keep_repeat: bool = False) -> None:
        super().__init__()
        self.q = nn.Linear(16, 16)
        self.kv = nn.Linear(16, 16)
        self.keep_repeat = keep_repeat

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> Any:
        b, s, _ = x.shape
        q = self.q(x).view(b, s, 4, 4).transpose(1, 2)
        k, v = self.kv(x).view(b, s, 2, 8).transpose(1, 2).split(4, dim=-1)
        key, value = _repeat(k, 2), _repeat(v, 2)
        keep = torch.arange(s) < lengths[:, None, None, None]
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=keep)
        out = out.transpose(1, 2).reshape(b, s, 16)
        if self.keep_repeat:  # the repeat has another user: it stays
            out = out + key.sum()
        return out


def test_repeated_heads_become_enable_gqa_and_the_repeat_goes() -> None:
    torch.manual_seed(0)
    model = GroupedAttention()
    gm, graph_args = _captured(model, (torch.randn(3, 5, 16), torch.tensor([5, 0, 2])))
    before = gm(*graph_args)[0]

    assert unrepeated_sdpa_heads(gm, OpMatcher.parse(DEFAULT_SPLITTING_OPS)) == 1

    (sdpa,) = gm.graph.find_nodes(
        op="call_function", target=F.scaled_dot_product_attention
    )
    assert sdpa.kwargs["enable_gqa"] is True
    assert [a.meta["example_value"].shape[1] for a in sdpa.args[1:3]] == [2, 2]
    assert not [n for n in gm.graph.nodes if n.target == "expand"]
    assert torch.equal(gm(*graph_args)[0], before)

    kept = GroupedAttention(keep_repeat=True)
    gm, _ = _captured(kept, (torch.randn(3, 5, 16), torch.tensor([5, 0, 2])))
    assert unrepeated_sdpa_heads(gm, OpMatcher.parse(DEFAULT_SPLITTING_OPS)) == 0


def test_stitch_runs_grouped_attention_unrepeated_and_matches_eager(
    tmp_path: Any,
) -> None:
    torch.manual_seed(0)
    backend = StitchBackend(CompilationConfig(cache_dir=str(tmp_path)))
    model = GroupedAttention()
    compiled = torch.compile(model, backend=backend, dynamic=True)
    for batch, seq in ((3, 5), (2, 7)):
        x = torch.randn(batch, seq, 16)
        lengths = torch.arange(batch) % seq
        torch.testing.assert_close(compiled(x, lengths), model(x, lengths))
    code = backend.compiled[-1].code
    assert "enable_gqa=True" in code, code
