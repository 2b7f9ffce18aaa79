"""``compile_sizes`` where a graph holds more sizes than the runtime size.

NOTE: [sizes that move with the token count] (runtime/pipeline/piecewise.py):
a size under another symbol with the same example value is the same size and
is specialized with it (vLLM's graphs: ``input_ids`` and ``positions`` are
marked dynamic one by one, with duck sizing off); a size that moves apart (a
transformers model's sequence length beside its batch) leaves the static
targets out of the pieces it reaches, with one warning per graph.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

import pytest
import torch
import torch.fx.experimental._config as fx_config

from stitch.runtime import CompilationConfig
from stitch.runtime.passes import InductorPass
from stitch.runtime.pipeline.backend import StitchBackend

from backend_support import INDUCTOR_TOL, TINY, counting, eager_and_compiled, model_for

# See NOTE: [many compiles of one forward] in conftest.py.
pytestmark = [pytest.mark.usefixtures("dynamo_state"), pytest.mark.slow]

SIZES = [2, 4]


def test_sizes_under_two_symbols_specialize_together(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    # As vLLM traces: token ids and positions marked dynamic one by one, duck
    # sizing off, so the graph takes the token count as two symbols.
    model = model_for(TINY)
    # Compiles counted and targets read: in the backend call.
    config = CompilationConfig(
        compile_sizes=SIZES,
        max_num_batched_tokens=32,
        cache_dir=str(tmp_path),
        tiered_start=False,
    )
    backend = StitchBackend(config)
    fn = torch.compile(model, backend=backend, fullgraph=True)
    with (
        fx_config.patch(use_duck_shape=False),
        caplog.at_level(logging.WARNING, logger="stitch"),
        counting() as deltas,
    ):
        for n in (8, 4, 2, 3):
            ref, out = eager_and_compiled(model, fn, TINY, n)
            torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    (compiled,) = backend.compiled
    symbols = [n for n in compiled.split_gm.graph.nodes if n.op == "placeholder"]
    sizes = [
        n for n in symbols if isinstance(n.meta.get("example_value"), torch.SymInt)
    ]
    assert len(sizes) == 2, [n.name for n in symbols]  # the test traces as vLLM does
    pieces = [r for r in compiled.reports if not r.splitting]
    assert all(r.targets == ["general", "size 2", "size 4"] for r in pieces), pieces
    # first, middle and last pieces, each for the general shape and two sizes
    assert deltas["num_inductor_compiles"] == 3 * (1 + len(SIZES))
    assert [r.getMessage() for r in caplog.records] == []


def test_a_size_that_moves_apart_leaves_static_targets_out_with_one_warning(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    from stitch.runtime.hf.tiny_models import tiny_config

    cfg = tiny_config("llama", vocab_size=256)
    model = transformers.LlamaForCausalLM(cfg).eval()
    # Each piece's targets read: compiled in the backend call.
    config = CompilationConfig(
        compile_sizes=[4, 8], cache_dir=str(tmp_path), tiered_start=False
    )
    backend = StitchBackend(config)
    fn = torch.compile(model, backend=backend, dynamic=True, fullgraph=True)
    # Batch 1: the sequence length is the runtime size, and its sizes compile.
    # Batch 2 (a second graph): the batch is, and the length moves apart from it.
    with caplog.at_level(logging.WARNING, logger="stitch"):
        for batch, length in [(1, 4), (1, 8), (1, 5), (2, 8), (2, 4)]:
            ids = torch.randint(0, 256, (batch, length))
            with torch.no_grad():
                ref = model(ids, use_cache=False).logits
                out = fn(ids, use_cache=False).logits
            torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    first, second = backend.compiled
    assert all(
        r.targets == ["general", "size 4", "size 8"]
        for r in first.reports
        if not r.splitting
    )
    assert all(r.targets == ["general"] for r in second.reports if not r.splitting)
    warnings = [r.getMessage() for r in caplog.records if r.name == "stitch"]
    assert len(warnings) == 1, warnings
    assert "compile_sizes [4, 8] are left out of 3 piece(s)" in warnings[0]


class Observe(InductorPass):
    """Notes, for each piece Inductor compiles, whether the compile is for one
    size and which of the options under test are on.  Its uuid is new in each
    run, so Inductor's own cache never skips the pass."""

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex
        self.seen: list[tuple[bool, bool, bool]] = []

    def __call__(self, graph: Any) -> None:
        from torch._inductor import config as inductor_config

        static = not any(
            isinstance(dim, torch.SymInt)
            for node in graph.find_nodes(op="placeholder")
            if isinstance(node.meta.get("val"), torch.Tensor)
            for dim in node.meta["val"].shape
        )
        self.seen.append(
            (
                static,
                bool(inductor_config.max_autotune),
                bool(inductor_config.coordinate_descent_tuning),
            )
        )

    def options(self) -> dict[str, Any]:
        return {"run": self.run}


def test_options_of_one_size_reach_its_compiles_and_only_those(
    tmp_path: object,
) -> None:
    """NOTE: [options of one size]: compile_sizes_inductor_config patches the
    static sizes' compiles over inductor_compile_config; the general runnable,
    which serves every other size, is compiled without it."""
    observe = Observe()
    model = model_for(TINY)
    config = CompilationConfig(
        compile_sizes=SIZES,
        max_num_batched_tokens=32,
        cache_dir=str(tmp_path),
        # The pass notes each compile in this process; compiles counted.
        tiered_start=False,
        inductor_passes=[observe],
        inductor_compile_config={"max_autotune": False},
        compile_sizes_inductor_config={
            "max_autotune": True,
            "coordinate_descent_tuning": True,
        },
    )
    backend = StitchBackend(config)
    fn = torch.compile(model, backend=backend, fullgraph=True)
    with counting() as deltas:
        for n in (8, 4, 2, 3):
            ref, out = eager_and_compiled(model, fn, TINY, n)
            torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    assert deltas["num_inductor_compiles"] == 3 * (1 + len(SIZES))
    assert sorted(observe.seen) == sorted(
        [(False, False, False)] * 3 + [(True, True, True)] * (3 * len(SIZES))
    )
    # The options are in the entry's key: the same config again starts warm, and
    # other options of one size start cold.
    for options, compiles in (
        (config.compile_sizes_inductor_config, 0),
        ({"coordinate_descent_tuning": True}, 3 * (1 + len(SIZES))),
    ):
        torch._dynamo.reset()
        again = dataclasses.replace(config, compile_sizes_inductor_config=options)
        fn = torch.compile(model, backend=StitchBackend(again), fullgraph=True)
        with counting() as deltas:
            ref, out = eager_and_compiled(model, fn, TINY, 4)
        torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
        assert deltas.get("num_inductor_compiles", 0) == compiles, options
