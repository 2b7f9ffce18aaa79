"""A landed piece whose compile added guards on its runtime size alone (NOTE:
[guards a landing adds on the size alone], runtime/pipeline/tiered/size_guards.py):
on a GPU every Triton piece adds 32-bit indexing guards (``64*s72 <=
2147483647``), which a tiered start must not answer by leaving the piece
uncompiled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.fx as fx
from test_tiered import _fresh_dynamo, serve_until_settled, tiered  # noqa: F401
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from stitch.runtime.pipeline.piecewise import PiecewiseBackend
from stitch.runtime.pipeline.tiered.size_guards import (
    SizeGuardedPiece,
    size_predicate,
    size_symbol,
)
from stitch.runtime.pipeline.tiered.tier import Tier

from backend_support import (
    TINY,
    compile_model,
    inputs,
    model_for,
    run_fresh,
    stitch_warnings,
)

INT32_MAX = 2**31 - 1


def _graph_with_size(name: str = "s72") -> tuple[fx.GraphModule, Any]:
    env = ShapeEnv()
    size = env.create_symintnode(env.create_unbacked_symint().node.expr, hint=None)
    graph = fx.Graph()
    x = graph.placeholder("x")
    n = graph.placeholder("n")
    n.meta["example_value"] = size
    graph.output((x, n))
    return fx.GraphModule({}, graph), size.node.expr


def test_guards_on_the_size_alone_become_a_predicate_of_the_size() -> None:
    gm, symbol = _graph_with_size()
    assert size_symbol(gm, 1) == symbol and size_symbol(gm, 0) is None
    s = symbol.name
    holds = size_predicate(gm, 1, [f"64*{s} <= {INT32_MAX}", f"{s} <= {INT32_MAX}"])
    assert holds is not None
    assert holds(1) and holds(INT32_MAX // 64)
    assert not holds(INT32_MAX // 64 + 1)
    # As a compile worker reports them: structural text, torch's own classes.
    from torch.utils._sympy.functions import FloorDiv

    from stitch.runtime.compat.guard_codec import encode

    recorded = [encode(64 * symbol <= INT32_MAX), encode(FloorDiv(symbol, 3) <= 2)]
    assert all("'" in r for r in recorded)
    structural = size_predicate(gm, 1, recorded)
    assert structural is not None
    assert [structural(k) for k in (1, 8, 9)] == [True, True, False]
    # Old printed text reads only where it is unambiguous (NOTE: [which old
    # text guards still read], compat/guard_codec.py): no floor division or
    # modulo, which it cannot tell torch's from sympy's.
    for text in (f"({s}//3) <= 2", f"Ne(Mod({s}, 2), 1)"):
        assert size_predicate(gm, 1, [text]) is None


@pytest.mark.parametrize(
    "guards",
    [["u99 <= 5"], ["64*{s}*u99 <= 2147483647"], ["{s} <="], []],
    ids=["another_symbol", "size_and_another", "unparseable", "none"],
)
def test_other_guards_are_not_taken_for_the_size(guards: list[str]) -> None:
    gm, symbol = _graph_with_size()
    texts = [g.format(s=symbol.name) for g in guards]
    got = size_predicate(gm, 1, texts)
    if guards:
        assert got is None
    else:
        assert got is not None and got(123)  # no guard holds everywhere
    assert size_predicate(gm, None, [f"{symbol.name} <= 5"]) is None


@pytest.mark.slow
def test_a_tiered_start_swaps_a_piece_compiled_under_size_guards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Each landing reports a guard on its piece's size (as a GPU compile's
    32-bit indexing guards do, here ``size <= 4``): every piece is swapped in,
    runs compiled at sizes 2-4 and uncompiled above, and every forward equals
    eager's."""
    real_landed = Tier.landed

    def landed(tier: Tier, name: str, record: Any, guards: Any) -> None:
        symbol = size_symbol(tier.graphs[name], tier.backends[name].size_index)
        extra = [f"{symbol} <= 4"] if symbol is not None else []
        real_landed(tier, name, record, [*guards, *extra])

    monkeypatch.setattr(Tier, "landed", landed)
    model = model_for()
    backend, fn = compile_model(model, tiered(tmp_path))
    run_fresh(model, fn, inputs(TINY, 3))
    tier = backend.compiled[-1].tier
    assert tier is not None
    serve_until_settled(model, fn, tier)
    assert not tier.timeline()["uncompiled"], tier.timeline()
    assert not [w for w in stitch_warnings(caplog) if "stays uncompiled" in w]
    guarded = [
        b for b in backend.compiled[-1].backends.values() if type(b) is SizeGuardedPiece
    ]
    assert guarded and set(tier.size_guards) == {b.name for b in guarded}
    for b in guarded:
        assert b.runnable_for(3) is not b.fallback.runnable_for(3)  # compiled
        assert b.runnable_for(7) is b.fallback.runnable_for(7)  # uncompiled
        assert type(b.fallback) is PiecewiseBackend
    for n in range(2, 9):
        args = inputs(TINY, n)
        torch.testing.assert_close(
            run_fresh(model, fn, args),
            run_fresh(model, model, args),
            rtol=1e-4,
            atol=1e-4,
        )
