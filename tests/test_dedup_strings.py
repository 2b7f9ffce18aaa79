"""Layer-name strings inside compiled pieces and one-compile-per-unique-piece.

``stitch::layer_tag`` decomposes away (its string never reaches compiled code),
so layers that differ only in that string share one compile;
``stitch::layer_scale`` keeps its string in the compiled code, so each layer
compiles on its own - and must, or every layer would use layer 0's name.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import stitch.runtime.examples.ops  # noqa: F401 - registers the ops
from stitch.runtime import CompilationConfig, StitchBackend, compilation_counter


class Block(nn.Module):
    def __init__(self, index: int, op: str) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(index)
        self.w = nn.Parameter(torch.randn(16, 16, generator=gen) / 4)
        self.layer_name = f"model.layers.{index}"
        self.op = op
        self.register_buffer("k_cache", torch.zeros(8, 4, 1, 16))
        self.register_buffer("v_cache", torch.zeros(8, 4, 1, 16))

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = getattr(torch.ops.stitch, self.op)(x @ self.w, self.layer_name)
        out = torch.empty_like(h)
        q = h.view(-1, 1, 16)
        torch.ops.stitch.attention(
            q, q, q, self.k_cache, self.v_cache, positions, out.view(-1, 1, 16), 1.0
        )
        return x + out.relu()


class Stack(nn.Module):
    def __init__(self, layers: int, op: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(i, op) for i in range(layers))

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, positions)
        return x


def _compile_and_check(layers: int, op: str) -> tuple[int, list[str]]:
    torch._dynamo.reset()
    model = Stack(layers, op)
    # Inductor's compiles counted, in the backend call.
    backend = StitchBackend(CompilationConfig(disable_cache=True, tiered_start=False))
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    positions = torch.zeros(8, dtype=torch.long)
    before = compilation_counter.num_inductor_compiles
    with torch.no_grad():
        expected = model(x, positions)
        actual = compiled(x, positions)
    torch.testing.assert_close(actual, expected)
    states = [r.cache for r in backend.compiled[0].reports if not r.splitting]
    return compilation_counter.num_inductor_compiles - before, states


@pytest.mark.parametrize("op", ["layer_tag", "layer_scale"])
def test_layer_strings(op: str) -> None:
    compiles_2, _ = _compile_and_check(2, op)
    compiles_5, states = _compile_and_check(5, op)
    if op == "layer_tag":
        # first piece, one shared middle piece, last piece: independent of depth
        assert compiles_2 == compiles_5 == 3
        assert states.count("shared") == 5 + 1 - 3
    else:
        # the name is baked into each layer's code: one compile per piece
        assert compiles_5 == 5 + 1
        assert "shared" not in states
