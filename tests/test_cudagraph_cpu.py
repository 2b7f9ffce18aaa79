"""The CUDA graph runtime without a GPU.

Pure logic (modes, validation, the padding table, capture order, size tables,
the padding runner) runs directly.  The whole runtime runs end to end under
:class:`EmulatedGraphOps`, whose "replay" re-runs the captured call on the
captured arguments: a runtime that forgot to copy new inputs into its static
buffers, or let an input address change, computes stale results here as it
would on a GPU.  Without emulation, on CPU the backend ignores cudagraph_mode.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import GOLDEN_DIR
from hypothesis import given
from hypothesis import strategies as st

from stitch.codegen import lower_execution
from stitch.core.errors import (
    StitchConfigError,
    StitchInputError,
    StitchRuntimeError,
)
from stitch.runtime import (
    CompilationConfig,
    CUDAGraphMode,
    StitchBackend,
    compilation_counter,
)
from stitch.runtime.cudagraph import (
    FULL_GRAPH,
    CUDAGraphManager,
    CUDAGraphTables,
    CUDAGraphWrapper,
    EmulatedGraphOps,
    PaddedRunner,
    capture_order,
    check_padding,
    full_graph_limit,
    input_name,
    padding_table,
    weak_ref_tensor,
)
from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs
from stitch.runtime.kernels.attention import attention_reference
from stitch.runtime.loader import compile_execution_fn

# The vLLM-style baseline lives with the benchmark (bench/vllm_style.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from vllm_style import VllmStyleForward, VllmStyleManager  # noqa: E402

GOLDEN = GOLDEN_DIR / Path(__file__).stem
SIZES = [1, 2, 4, 8]
LLAMA = LlamaConfig(num_layers=2)
PIECES = 3  # compiled pieces of the 2-layer llama: before, between, after attention
NO_GUARDS = {"guard_filter_fn": lambda entries: [False] * len(entries)}


# -- modes and validation ------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("none", CUDAGraphMode.NONE),
        ("PIECEWISE", CUDAGraphMode.PIECEWISE),
        (" full ", CUDAGraphMode.FULL),
        ("full-and-piecewise", CUDAGraphMode.FULL_AND_PIECEWISE),
        (0, CUDAGraphMode.NONE),
        (3, CUDAGraphMode.FULL_AND_PIECEWISE),
        (CUDAGraphMode.FULL, CUDAGraphMode.FULL),
    ],
)
def test_mode_parsing(value: Any, mode: CUDAGraphMode) -> None:
    assert CUDAGraphMode.parse(value) is mode
    assert CompilationConfig(cudagraph_mode=value).cudagraph_mode is mode


@pytest.mark.parametrize("value", ["partial", "", 4, -1, None, 1.0])
def test_mode_nonsense_is_rejected(value: Any) -> None:
    with pytest.raises(
        StitchConfigError, match=r"cudagraph_mode=.*: NONE \(0\), PIECEWISE \(1\)"
    ):
        CompilationConfig(cudagraph_mode=value)


def test_mode_bool_is_rejected() -> None:
    with pytest.raises(StitchConfigError, match="cudagraph_mode=True: .* not a bool"):
        CompilationConfig(cudagraph_mode=True)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cudagraph_mode": "FULL", "max_full_cudagraph_size": 4}, "only used with"),
        (
            {"cudagraph_mode": "FULL_AND_PIECEWISE", "max_full_cudagraph_size": 0},
            "positive int",
        ),
        (
            {
                "cudagraph_mode": "FULL_AND_PIECEWISE",
                "cudagraph_capture_sizes": [1, 2],
                "max_full_cudagraph_size": 4,
            },
            "exceeds max_cudagraph_capture_size=2",
        ),
        ({"cudagraph_pad_values": {"positions": "-1"}}, "cudagraph_pad_values"),
        ({"cudagraph_pad_values": {"positions": True}}, "cudagraph_pad_values"),
        ({"cudagraph_forbid_capture_after_startup": 1}, "must be a bool"),
        ({"cudagraph_check_addresses": "yes"}, "must be a bool"),
    ],
)
def test_cudagraph_fields_are_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(StitchConfigError, match=message):
        CompilationConfig(**fields)


def test_compile_sizes_must_agree_with_padding() -> None:
    def check(compile_sizes: list[int]) -> None:
        config = CompilationConfig(
            compile_sizes=compile_sizes, cudagraph_capture_sizes=SIZES
        )
        check_padding(config.cudagraphs, config.compile_sizes)

    check([4, 600])
    with pytest.raises(StitchConfigError, match=r"size\(s\) \[3, 5\].*capture size 8"):
        check([3, 4, 5])
    # Above the largest capture size nothing is padded: any compile size is fine.
    check([9])


def test_full_graph_limit() -> None:
    def limit(mode: str, **extra: Any) -> int:
        return full_graph_limit(
            CompilationConfig(
                cudagraph_mode=mode, cudagraph_capture_sizes=SIZES, **extra
            ).cudagraphs
        )

    assert limit("NONE") == 0
    assert limit("PIECEWISE") == 0
    assert limit("FULL") == 8
    assert limit("FULL_AND_PIECEWISE", max_full_cudagraph_size=2) == 2
    assert limit("FULL_AND_PIECEWISE") == 8  # no limit: every capture size is full


# -- padding table and capture order ----------------------------------------------------
def test_padding_table_example() -> None:
    assert padding_table([8, 1, 4, 2]) == [1, 1, 2, 4, 4, 8, 8, 8, 8]
    assert padding_table([]) == []


@given(st.sets(st.integers(1, 300), min_size=1, max_size=30))
def test_padding_table_is_the_smallest_capture_size_at_least_n(sizes: set[int]) -> None:
    table = padding_table(list(sizes))
    assert len(table) == max(sizes) + 1
    for n, padded in enumerate(table):
        assert padded == min(s for s in sizes if s >= n)


def test_default_capture_sizes_pad_every_size_up_to_the_maximum() -> None:
    config = CompilationConfig()
    table = padding_table(config.cudagraph_capture_sizes)
    assert table[1] == 1 and table[3] == 4 and table[9] == 16 and table[257] == 272
    assert len(table) - 1 == config.max_cudagraph_capture_size == 512


def test_capture_order_is_largest_first() -> None:
    assert capture_order([2, 8, 1, 4, 8]) == [8, 4, 2, 1]


def test_start_up_capture_runs_sizes_largest_first_with_warmups() -> None:
    config = CompilationConfig(
        cudagraph_capture_sizes=SIZES,
        cudagraph_num_of_warmups=2,
        cudagraph_forbid_capture_after_startup=True,
    )
    manager = CUDAGraphManager(config.cudagraphs, ops=EmulatedGraphOps())
    calls: list[int] = []
    manager.capture_sizes(calls.append)
    assert calls == [8, 8, 8, 4, 4, 4, 2, 2, 2, 1, 1, 1]
    assert not manager.capture_allowed


def test_many_sizes_show_a_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    manager = CUDAGraphManager(CompilationConfig().cudagraphs, ops=EmulatedGraphOps())
    manager.capture_sizes(lambda size: None, sizes=range(1, 20))
    assert "capturing CUDA graphs" in capsys.readouterr().err


# -- wrappers and size tables -----------------------------------------------------------
class Piece:
    """A compiled piece stand-in: ``runnable_for(size)`` and a call log."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[int] = []

    def runnable_for(self, size: int) -> Callable[..., Any]:
        def run(x: torch.Tensor) -> torch.Tensor:
            self.calls.append(size)
            return x * 2 + size

        return run


def test_wrapper_warms_up_then_captures_then_replays() -> None:
    config = CompilationConfig(cudagraph_num_of_warmups=2)
    ops = EmulatedGraphOps()
    manager = CUDAGraphManager(config.cudagraphs, ops=ops)
    piece = Piece("p")
    wrapper = CUDAGraphWrapper(
        piece.runnable_for(4), manager, piece="p", size=4, weak_output=False
    )
    x = torch.ones(4)
    with compilation_counter.expect(num_cudagraph_captured=0):
        wrapper(x)
        wrapper(x)
    assert wrapper.graph is None and len(piece.calls) == 2
    with compilation_counter.expect(num_cudagraph_captured=1):
        out = wrapper(x)
    assert torch.equal(out, torch.full((4,), 6.0))
    x.fill_(10)  # the captured input changes in place: a replay sees it
    again = wrapper(torch.zeros(4))  # a new tensor is NOT seen: the graph reads x
    assert again is wrapper.output
    assert torch.equal(again, torch.full((4,), 24.0))
    assert ops.graphs[0].replays == 2


def test_size_tables_hold_graph_wrappers_for_capture_sizes_only() -> None:
    config = CompilationConfig(cudagraph_num_of_warmups=0)
    manager = CUDAGraphManager(config.cudagraphs, ops=EmulatedGraphOps())
    pieces = [Piece("a"), Piece("b")]
    tables = CUDAGraphTables(pieces, manager, ["a", "b"], SIZES, last=1)
    table = tables[4]
    assert [type(t) for t in table] == [CUDAGraphWrapper, CUDAGraphWrapper]
    assert [w.weak_output for w in table] == [False, True]
    assert [w.piece for w in table] == ["a", "b"]
    above = tables[9]
    assert not any(isinstance(t, CUDAGraphWrapper) for t in above)
    # After capture the table slot holds a bare replay closure.
    x = torch.ones(4)
    table[0](x)
    assert not isinstance(tables[4][0], CUDAGraphWrapper)
    assert torch.equal(tables[4][0](x), torch.full((4,), 6.0))
    assert isinstance(tables[4][1], CUDAGraphWrapper)


def test_capture_is_refused_when_forbidden() -> None:
    config = CompilationConfig(cudagraph_num_of_warmups=1)
    manager = CUDAGraphManager(config.cudagraphs, ops=EmulatedGraphOps())
    wrapper = CUDAGraphWrapper(
        Piece("p").runnable_for(2), manager, piece="p", size=2, weak_output=False
    )
    manager.forbid_capture()
    with pytest.raises(
        StitchRuntimeError, match=r"piece p at size 2 .* forbidden after start-up"
    ):
        wrapper(torch.ones(2))
    manager.allow_capture()
    wrapper(torch.ones(2))
    wrapper(torch.ones(2))
    assert wrapper.graph is not None


def test_address_check_names_piece_size_and_argument() -> None:
    config = CompilationConfig(
        cudagraph_num_of_warmups=0, cudagraph_check_addresses=True
    )
    manager = CUDAGraphManager(config.cudagraphs, ops=EmulatedGraphOps())
    wrapper = CUDAGraphWrapper(
        Piece("p").runnable_for(2), manager, piece="p", size=2, weak_output=False
    )
    x = torch.ones(2)
    wrapper(x)
    wrapper(x)
    with pytest.raises(
        StitchRuntimeError, match=r"piece p at size 2: argument 0 is at 0x"
    ):
        wrapper(torch.ones(2))


def test_copy_inputs_copies_moved_inputs_into_the_captured_ones() -> None:
    config = CompilationConfig(cudagraph_num_of_warmups=0, cudagraph_copy_inputs=True)
    manager = CUDAGraphManager(config.cudagraphs, ops=EmulatedGraphOps())
    wrapper = CUDAGraphWrapper(
        Piece("p").runnable_for(2), manager, piece="p", size=2, weak_output=False
    )
    wrapper(torch.ones(2))
    assert torch.equal(wrapper(torch.full((2,), 5.0)), torch.full((2,), 12.0))


def test_pools_are_shared_unless_asked_otherwise() -> None:
    for shared, pools in ((True, 1), (False, 4)):
        ops = EmulatedGraphOps()
        manager = CUDAGraphManager(
            CompilationConfig(cudagraph_num_of_warmups=0).cudagraphs,
            ops=ops,
            shared_pool=shared,
        )
        tables = CUDAGraphTables(
            [Piece("a"), Piece("b")], manager, ["a", "b"], SIZES, last=1
        )
        for size in (8, 4):
            for run in tables[size]:
                run(torch.ones(size))
        assert ops.pools == pools


def test_weak_ref_tensor_aliases_without_owning() -> None:
    base = torch.arange(12.0).reshape(3, 4)
    view = base[1:, 1:3]
    weak = weak_ref_tensor(view)
    assert weak.data_ptr() == view.data_ptr()
    assert (weak.shape, weak.stride(), weak.storage_offset()) == (
        view.shape,
        view.stride(),
        view.storage_offset(),
    )
    base.add_(1)
    assert torch.equal(weak, view)
    count = torch._C._storage_Use_Count(base.untyped_storage()._cdata)
    keep = [weak_ref_tensor(base) for _ in range(3)]
    assert torch._C._storage_Use_Count(base.untyped_storage()._cdata) == count
    del keep


# -- the padding runner --------------------------------------------------------------------
def _runner(
    runners: dict[int, Callable[..., Any]],
    above_max: Callable[..., Any],
    pad: float = -1,
) -> PaddedRunner:
    """A runner over ``fn(n, ids[n], weight[3])`` returning ``(ids[n], weight)``."""
    from stitch.runtime.cudagraph import DynamicInput, PaddingPlan

    plan = PaddingPlan(
        size_index=0,
        size_indices=(0,),
        dynamic=(DynamicInput(1, "ids", (2,), torch.int64, torch.device("cpu"), pad),),
        slice_outputs=(True, False),
        flat_output=True,
    )
    return PaddedRunner(plan, padding_table(SIZES), runners, above_max)


def test_padded_runner_pads_copies_once_and_slices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[int, torch.Tensor]] = []

    def run(n: int, ids: torch.Tensor, weight: torch.Tensor) -> tuple[Any, ...]:
        seen.append((n, ids.clone()))
        return ids * 10, weight

    runner = _runner(dict.fromkeys(SIZES, run), above_max=lambda *a: "above")
    copies: list[int] = []
    real_copy = torch._foreach_copy_

    def counting_copy(dsts: list[torch.Tensor], srcs: list[torch.Tensor]) -> None:
        copies.append(len(dsts))
        real_copy(dsts, srcs)

    monkeypatch.setattr(torch, "_foreach_copy_", counting_copy)
    weight = torch.ones(3)
    ids = torch.arange(6).reshape(3, 2)
    out, w = runner(3, ids, weight)
    assert copies == [2]  # one batched copy: the rows and the padding
    n, padded = seen[-1]
    assert n == 4
    assert torch.equal(padded, torch.tensor([[0, 1], [2, 3], [4, 5], [-1, -1]]))
    assert torch.equal(out, ids * 10) and w is weight
    runner(4, torch.zeros(4, 2, dtype=torch.int64), weight)
    assert seen[-1][0] == 4 and copies[-1] == 1  # n == padded: no padding rows
    runner(3, ids, weight)
    assert torch.equal(seen[-1][1][3], torch.tensor([-1, -1]))  # padding rewritten
    assert runner(9, ids, weight) == "above"


@pytest.mark.parametrize(
    ("ids", "given"),
    [
        (torch.zeros(2, 2, dtype=torch.int64), r"shape \(2, 2\)"),
        # copy_ would broadcast one row over three, or cast: neither is copied.
        (torch.zeros(1, 2, dtype=torch.int64), r"shape \(1, 2\)"),
        (torch.zeros(3, 1, dtype=torch.int64), r"shape \(3, 1\)"),
        (torch.zeros(3, 2), "torch.float32 on cpu"),
        (torch.zeros(3, 2, dtype=torch.int32), "torch.int32 on cpu"),
    ],
)
def test_padded_runner_copies_only_inputs_that_fit(
    ids: torch.Tensor, given: str
) -> None:
    calls: list[int] = []
    runner = _runner(
        dict.fromkeys(SIZES, lambda *a: calls.append(a[0]) or (a[1], a[2])),
        above_max=print,
    )
    runner(3, torch.full((3, 2), 7), torch.ones(3))
    before = [b.clone() for b in runner.buffers]
    with pytest.raises(
        StitchInputError,
        match=rf"input ids: expected 3 rows \(the runtime size\) and trailing dims "
        rf"\(2,\), torch.int64 on cpu, got {given}",
    ):
        runner(3, ids, torch.ones(3))
    assert all(torch.equal(b, a) for b, a in zip(runner.buffers, before, strict=True))
    assert calls == [4]
    # Inference tensors carry other dispatch keys: they fit all the same.
    with torch.inference_mode():
        fresh = torch.full((3, 2), 5)
    runner(3, fresh, torch.ones(3))
    assert calls == [4, 4]


# -- end to end under emulation -------------------------------------------------------------
def _inputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, positions = llama_inputs(LLAMA, n, seed=seed)
    torch._dynamo.mark_dynamic(ids, 0)
    torch._dynamo.mark_dynamic(positions, 0)
    return ids, positions


@functools.cache
def _traced() -> tuple[torch.fx.GraphModule, tuple[Any, ...]]:
    """Dynamo's graph of the 2-layer llama with a dynamic token count (traced once)."""
    seen: list[tuple[torch.fx.GraphModule, tuple[Any, ...]]] = []
    graphargs: dict[str, Any] = {}

    def record(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        seen.append((gm, tuple(example_inputs)))
        for node in gm.graph.find_nodes(op="placeholder"):
            graphargs[node.name] = node.meta["grapharg"]
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(build_llama(LLAMA), backend=record, fullgraph=True)
    with torch.inference_mode():
        compiled(*_inputs(8, 0))
    torch._dynamo.reset()
    gm = seen[0][0]
    # Dynamo drops each placeholder's "grapharg" (its source) once the backend has
    # returned; a backend call on this graph later sees what a live one would.
    for node in gm.graph.find_nodes(op="placeholder"):
        node.meta["grapharg"] = graphargs[node.name]
    return seen[0]


def _graph_args(
    split_gm: torch.fx.GraphModule, model: torch.nn.Module
) -> Callable[[torch.Tensor, torch.Tensor], list[Any]]:
    """The graph's flat inputs, in placeholder order, for ``model(ids, positions)``."""
    sources = []
    for node in split_gm.graph.nodes:
        if node.op == "placeholder":
            name = node.meta["grapharg"].source.name
            sources.append(name() if callable(name) else name)

    def args(ids: torch.Tensor, positions: torch.Tensor) -> list[Any]:
        scope = {"L": {"self": model, "input_ids": ids, "positions": positions}}
        return [
            eval(source, scope) for source in sources
        ]  # noqa: S307 - dynamo sources

    return args


class Served:
    """The backend's function for the llama graph (emulated graphs), and eager twin.

    Both models start with equal weights and empty caches and see the same
    calls, so their KV caches stay equal unless padding corrupts one.
    """

    def __init__(
        self, emulate: bool = True, manager: Any = CUDAGraphManager, **fields: Any
    ) -> None:
        fields.setdefault("cudagraph_capture_sizes", SIZES)
        fields.setdefault("cudagraph_pad_values", {"positions": -1})
        self.config = CompilationConfig(backend="eager", disable_cache=True, **fields)
        self.ops = EmulatedGraphOps()
        self.backend = StitchBackend(
            self.config,
            cudagraphs=manager(self.config, ops=self.ops) if emulate else None,
        )
        graph, example_inputs = _traced()
        self.fn = self.backend(graph, example_inputs)
        self.model = build_llama(LLAMA)
        self.eager = build_llama(LLAMA)
        self.args = _graph_args(graph, self.model)

    def __call__(self, n: int, seed: int) -> torch.Tensor:
        """One forward of both; the output cloned (under graphs it lives until the next)."""
        ids, positions = llama_inputs(LLAMA, n, seed=seed)
        with torch.inference_mode():
            expected = self.eager(ids, positions)
            (got,) = self.fn(*self.args(ids, positions))
            got = got.clone()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        return got

    def start_up(self, sizes: list[int] | None = None) -> int:
        """Capture at start-up; the number of graphs captured."""
        before = compilation_counter.num_cudagraph_captured
        self.backend.cudagraphs.capture_sizes(lambda n: self(n, 100 + n), sizes)
        return compilation_counter.num_cudagraph_captured - before

    @property
    def runner(self) -> PaddedRunner:
        assert self.fn is self.backend.cudagraphs.runners[-1]
        return self.fn


CALLS = [3, 1, 8, 5, 2, 7, 9, 12, 4, 3, 6, 1, 8, 16]


@pytest.mark.parametrize(
    ("fields", "graphs", "at_8"),
    [
        ({"cudagraph_mode": "PIECEWISE"}, PIECES * len(SIZES), "hoisted"),
        ({"cudagraph_mode": "FULL"}, len(SIZES), "full"),
        (
            {"cudagraph_mode": "FULL_AND_PIECEWISE", "max_full_cudagraph_size": 2},
            2 + PIECES * 2,
            "hoisted",
        ),
        (
            {"cudagraph_mode": "PIECEWISE", "manager": VllmStyleManager},
            PIECES * len(SIZES),
            "vllm",
        ),
        (
            {"cudagraph_mode": "PIECEWISE", "cudagraph_check_addresses": True},
            PIECES * len(SIZES),
            "hoisted",
        ),
    ],
    ids=["piecewise", "full", "full_and_piecewise", "per_piece", "address_check"],
)
def test_emulated_graphs_match_eager(
    fields: dict[str, Any], graphs: int, at_8: str
) -> None:
    served = Served(**fields)
    runner = served.runner.runners[8]  # what a padded size-8 forward calls
    if at_8 == "full":
        assert isinstance(runner, CUDAGraphWrapper) and runner.piece == FULL_GRAPH
    else:
        assert isinstance(runner, VllmStyleForward) == (at_8 == "vllm")
    assert served.start_up() == graphs
    # Every size at or below the largest capture size was captured at start-up.
    served.backend.cudagraphs.forbid_capture()
    replays = sum(g.replays for g in served.ops.graphs)
    for step, n in enumerate(CALLS):  # inside, between and above the capture sizes
        served(n, seed=step)
    assert sum(g.replays for g in served.ops.graphs) > replays


def test_padding_tokens_must_not_write_the_cache() -> None:
    """Without the -1 pad value the padded tokens overwrite live cache rows."""
    served = Served(cudagraph_mode="PIECEWISE", cudagraph_pad_values={})
    served.start_up()
    with pytest.raises(AssertionError):
        for step, n in enumerate(CALLS):
            served(n, seed=step)


def test_capture_after_start_up_is_forbidden() -> None:
    served = Served(
        cudagraph_mode="PIECEWISE", cudagraph_forbid_capture_after_startup=True
    )
    assert served.start_up(sizes=[8, 2]) == PIECES * 2
    served(7, seed=1)  # padded to 8: captured
    served(12, seed=2)  # above the largest size: no graphs
    with pytest.raises(StitchRuntimeError, match="at size 4 would be captured now"):
        served(3, seed=3)


def test_start_up_can_capture_only_the_first_sizes() -> None:
    """NOTE: [capture what the first request needs]: size 1 now, the rest on
    first use or while idle, then capture is forbidden as configured."""
    served = Served(
        cudagraph_mode="PIECEWISE", cudagraph_forbid_capture_after_startup=True
    )
    manager = served.backend.cudagraphs
    run = lambda n: served(n, 100 + n)  # noqa: E731
    manager.capture_sizes(run, [1], defer_rest=True)
    assert manager.captured_sizes == {1}
    assert manager.pending == sorted(set(SIZES) - {1}, reverse=True)
    before = compilation_counter.num_cudagraph_captured
    served(3, seed=1)  # padded to 4: its warm-up, then its capture
    served(4, seed=2)
    assert 4 in manager.captured_sizes
    assert compilation_counter.num_cudagraph_captured - before == PIECES
    assert manager.capture_pending(run, budget_s=0.0) == len(SIZES) - 3
    assert manager.capture_allowed
    assert manager.capture_pending(run) == 0
    assert manager.captured_sizes == set(SIZES) and not manager.capture_allowed
    assert compilation_counter.num_cudagraph_captured - before == PIECES * (
        len(SIZES) - 1
    )
    for step, n in enumerate(CALLS):
        served(n, seed=step)


def _compiled_llama() -> tuple[StitchBackend, Any, torch.nn.Module]:
    """The llama through torch.compile with Stitch and emulated graphs, and its
    eager twin (equal weights)."""
    torch._dynamo.reset()
    config = CompilationConfig(
        backend="eager",
        disable_cache=True,
        cudagraph_capture_sizes=SIZES,
        cudagraph_pad_values={"positions": -1},
    )
    backend = StitchBackend(
        config, cudagraphs=CUDAGraphManager(config.cudagraphs, ops=EmulatedGraphOps())
    )
    model, eager = build_llama(LLAMA), build_llama(LLAMA)
    compiled = torch.compile(
        model, backend=backend, fullgraph=True, options=dict(NO_GUARDS)
    )
    return backend, compiled, eager


def test_through_torch_compile() -> None:
    """Dynamo calls the padded runner: one compilation serves every size."""
    backend, compiled, eager = _compiled_llama()
    with (
        torch.inference_mode(),
        compilation_counter.expect(num_cudagraph_captured=PIECES * 3),
    ):
        for step, n in enumerate([8, 8, 1, 1, 3, 3, 5, 12, 4]):
            expected = eager(*_inputs(n, step))
            got = compiled(*_inputs(n, step)).clone()
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
    assert len(backend.compiled) == 1 and len(backend.cudagraphs.runners) == 1


def test_keyword_inputs_are_padded_by_their_keyword() -> None:
    """``model(input_ids=..., positions=...)``: Dynamo's sources are
    ``L['kwargs']['positions']``; the pad value is still found by the keyword."""
    backend, compiled, eager = _compiled_llama()
    with torch.inference_mode():
        for step, n in enumerate([3, 8]):  # 3 is padded: row 3 must write nothing
            ids, positions = _inputs(n, step)
            expected = eager(input_ids=ids, positions=positions)
            got = compiled(input_ids=ids, positions=positions)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
    plan = backend.cudagraphs.runners[-1].plan
    assert [(d.name, d.pad) for d in plan.dynamic] == [
        ("input_ids", 0),
        ("positions", -1),
    ]
    # Without Dynamo's sources (torch's aot_compile), the placeholder's name.
    graph = torch.fx.Graph()
    assert input_name(graph.placeholder("l_kwargs_positions_")) == "positions"
    assert input_name(graph.placeholder("l_positions_")) == "positions"


def test_replay_sees_new_inputs_at_the_same_size() -> None:
    served = _hoisted()
    outputs = [served(4, seed=seed) for seed in range(4)]  # warm-up, capture, replays
    assert not torch.equal(outputs[2], outputs[3])


# -- without CUDA -----------------------------------------------------------------------
def test_without_cuda_the_mode_is_ignored() -> None:
    served = Served(emulate=False, cudagraph_mode="FULL")
    assert not served.backend.cudagraphs.applies_to([torch.ones(2)])
    assert (
        not isinstance(served.fn, PaddedRunner)
        and not served.backend.cudagraphs.runners
    )
    with compilation_counter.expect(num_cudagraph_captured=0):
        for step, n in enumerate([3, 8, 1, 12]):
            served(n, seed=step)


def test_a_graph_that_cannot_be_padded_runs_without_graphs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A square input (both dims the token count) cannot be padded row-wise."""
    torch._dynamo.reset()
    config = CompilationConfig(
        backend="eager", disable_cache=True, cudagraph_capture_sizes=SIZES
    )
    backend = StitchBackend(
        config, cudagraphs=CUDAGraphManager(config.cudagraphs, ops=EmulatedGraphOps())
    )
    model = build_llama(LLAMA)

    def forward(
        ids: torch.Tensor, positions: torch.Tensor, square: torch.Tensor
    ) -> Any:
        return model(ids, positions) + square.sum(1, keepdim=True)

    compiled = torch.compile(
        forward, backend=backend, fullgraph=True, options=dict(NO_GUARDS)
    )
    ids, positions = _inputs(4, 0)
    square = torch.ones(4, 4)
    torch._dynamo.mark_dynamic(square, 0)
    torch._dynamo.mark_dynamic(square, 1)
    with caplog.at_level(logging.WARNING, logger="stitch"), torch.inference_mode():
        with compilation_counter.expect(num_cudagraph_captured=0):
            out = compiled(ids, positions, square)
            model.reset_kv_caches()
            expected = forward(ids, positions, square)
    torch._dynamo.reset()
    torch.testing.assert_close(out, expected)
    assert "running without CUDA graphs" in caplog.text and "only dim 0" in caplog.text


def test_padding_plan_of_the_llama_graph() -> None:
    plan = _hoisted().runner.plan
    assert [d.name for d in plan.dynamic] == ["input_ids", "positions"]
    assert [d.pad for d in plan.dynamic] == [0, -1]
    assert [d.rest for d in plan.dynamic] == [(), ()]
    assert plan.slice_outputs == (True,) and plan.flat_output
    assert plan.size_index in plan.size_indices


# -- the hoisted emitted source: golden, and it runs with graph tables -------------------------
@functools.cache
def _hoisted() -> Served:
    return Served(cudagraph_mode="PIECEWISE")


@pytest.mark.parametrize("case", ["llama_2_layer"])
def test_hoisted_source(case: str, golden: Any) -> None:
    code = _hoisted().backend.compiled[-1].code
    assert re.search(r"^    submod_0, .* = __vllm_dispatch__\[", code, re.M)
    golden(code)


STEPS = [8, 8, 8, 3, 3, 3, 5, 11]  # captures at 8 and 4, replays, one eager size


def _run_with_graph_tables(source: str) -> tuple[list[torch.Tensor], EmulatedGraphOps]:
    """``source``, bound to today's compiled pieces of the llama graph through graph
    tables and run for STEPS on a fresh model: each output (checked against eager)
    and the emulated graphs it captured."""
    served = _hoisted()
    compiled = served.backend.compiled[-1]
    ops = EmulatedGraphOps()
    manager = CUDAGraphManager(served.config.cudagraphs, ops=ops)
    names = compiled.submod_names
    tables = CUDAGraphTables(
        [compiled.backends[n] for n in names],
        manager,
        names,
        SIZES,
        last=len(names) - 1,
    )
    # The placeholder the emitted function dispatches on, by its position.
    size = compiled.code.split("__vllm_dispatch__[", 1)[1].split("]", 1)[0]
    placeholders = compiled.split_gm.graph.find_nodes(op="placeholder")
    size_on = dict(zip(_signature(compiled.code), placeholders, strict=True))[size]
    _, _, consts = lower_execution(compiled.split_gm, dispatch_on=size_on.name)
    fn = compile_execution_fn(source, compiled.backends, names, consts, dispatch=tables)
    runner = PaddedRunner(
        served.runner.plan, padding_table(SIZES), dict.fromkeys(SIZES, fn), fn
    )
    mine, reference = build_llama(LLAMA), build_llama(LLAMA)
    args = _graph_args(compiled.split_gm, mine)
    outputs = []
    with torch.inference_mode():
        for step, n in enumerate(STEPS):
            ids, positions = llama_inputs(LLAMA, n, seed=step)
            expected = reference(ids, positions)
            (got,) = runner(*args(ids, positions))
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
            outputs.append(got.clone())
    return outputs, ops


def test_hoisted_golden_runs_with_graph_tables() -> None:
    """The golden, bound to the compiled pieces through graph tables, computes the model."""
    path = GOLDEN / "llama_2_layer.py"
    if not path.exists():
        pytest.fail(
            f"{path} is missing; run tests/test_cudagraph_cpu.py --snapshot-update"
        )
    _, ops = _run_with_graph_tables(path.read_text(encoding="utf-8"))
    assert len(ops.graphs) == PIECES * 2  # sizes 8 and 4, warm-up first


# Byte for byte what the code generator wrote for this graph before readable names
# (issue 34): golden/test_cudagraph_cpu/llama_2_layer.py at d3f6e48^, format 4.
FORMAT_4 = Path(__file__).parent / "fixtures" / "emitted_format4" / "llama_2_layer.py"


def _signature(source: str) -> list[str]:
    params = re.search(r"^def execution_fn\(\n(.*?)\n    \*,$", source, re.M | re.S)
    assert params is not None
    return [p.strip().rstrip(",") for p in params.group(1).splitlines()]


def test_format_4_file_and_the_golden_compute_alike() -> None:
    """NOTE: [names from the model's paths]: the loader binds the emitted function
    by position, so the file written before readable names (Dynamo's names, s80)
    and today's golden of the same graph compute the same, and what eager does."""
    old = FORMAT_4.read_text(encoding="utf-8")
    new = (GOLDEN / "llama_2_layer.py").read_text(encoding="utf-8")
    # One graph, two spellings: the old file's parameters are the graph's own
    # placeholder names, the golden's are the readable ones, in the same order.
    graph = _hoisted().backend.compiled[-1].split_gm
    placeholders = [n.name for n in graph.graph.find_nodes(op="placeholder")]
    assert old.startswith("# Stitching source emitted by stitch.codegen (format 4).")
    changed = f"the llama graph is no longer the one {FORMAT_4.name} was emitted for"
    assert old.splitlines()[2] == new.splitlines()[2], changed  # the graph's hash
    assert _signature(old) == placeholders, changed
    renamed = dict(zip(_signature(old), _signature(new), strict=True))
    # NOTE: [every size gets a name]: s72 is input_ids.size(0), s80 positions'.
    assert renamed["s72"] == "num_tokens" and renamed["s80"] == "positions_len"
    assert all(o != n for o, n in renamed.items())
    assert "_modules_" not in new.split("import torch")[1]
    (old_out, old_ops), (new_out, new_ops) = map(_run_with_graph_tables, (old, new))
    for a, b in zip(old_out, new_out, strict=True):
        assert torch.equal(a, b)
    assert len(old_ops.graphs) == len(new_ops.graphs) == PIECES * 2


# -- the attention op's padding semantics ---------------------------------------------------
def test_negative_position_writes_nothing_and_outputs_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 4, generator=gen) for _ in range(3))
    k_cache = torch.randn(4, 5, 2, 4, generator=gen)
    v_cache = torch.randn(4, 5, 2, 4, generator=gen)
    before = (k_cache.clone(), v_cache.clone())
    out = torch.full_like(q, 7.0)
    attention_reference(q, k, v, k_cache, v_cache, torch.tensor([2, -1, 0]), out, 0.5)
    assert torch.equal(out[1], torch.zeros(2, 4))
    assert torch.equal(k_cache[1], before[0][1]) and torch.equal(
        v_cache[1], before[1][1]
    )
    assert torch.equal(k_cache[0, 2], k[0]) and torch.equal(k_cache[2, 0], k[2])
    assert not torch.isnan(out).any()


_INTERPRETED_KERNEL_CHECK = """
import torch
from stitch.runtime.kernels import triton_attention
from stitch.runtime.kernels.attention import attention_reference

kernels = triton_attention.triton_kernels()
assert kernels is not None
gen = torch.Generator().manual_seed(0)
# dtype, head dim, k/v strided views, heads, kv heads, sinks, softcap, window
for dtype, dim, strided, heads, kv_heads, sinks, softcap, window in [
    (torch.float32, 24, False, 2, 2, False, 0.0, 0),
    (torch.float16, 16, True, 2, 2, False, 0.0, 0),
    (torch.bfloat16, 32, False, 2, 2, False, 0.0, 0),
    (torch.float32, 16, False, 4, 2, True, 0.0, 0),  # GQA, GPT-OSS's sinks
    (torch.float32, 16, True, 4, 1, False, 1.5, 0),  # Gemma 2's softcap
    (torch.float32, 16, False, 2, 2, False, 0.0, 20),  # a sliding window
    (torch.float16, 16, False, 4, 2, True, 3.0, 9),  # all of them
]:
    n, length = 5, 40
    q = torch.randn(n, heads, dim, generator=gen).to(dtype)
    qkv = torch.randn(n, 3, kv_heads, dim, generator=gen).to(dtype)
    k, v = (qkv[:, 1], qkv[:, 2]) if strided else (qkv[:, 1].clone(), qkv[:, 2].clone())
    caches = [torch.randn(n + 1, length, kv_heads, dim, generator=gen).to(dtype) for _ in "kv"]
    positions = torch.tensor([0, length - 1, -1, 17, 33])
    extra = (torch.randn(heads, generator=gen) * 2 if sinks else None, softcap, window)
    expected, got = torch.full_like(q, 7.0), torch.full_like(q, 7.0)
    ref_caches = [c.clone() for c in caches]
    attention_reference(q, k, v, *ref_caches, positions, expected, dim**-0.5, *extra)
    triton_attention.decode_attention(
        q, k, v, *caches, positions, got, dim**-0.5, *extra, kernels=kernels
    )
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
    assert all(torch.equal(c, r) for c, r in zip(caches, ref_caches))
    if sinks or softcap or window:
        # the feature changes the numbers: a kernel that ignored it would fail
        plain = torch.full_like(q, 7.0)
        attention_reference(q, k, v, *[c.clone() for c in caches], positions, plain, dim**-0.5)
        assert (plain.float() - expected.float()).abs().max() > 0.05
print("ok")
"""


def test_triton_kernel_under_the_interpreter() -> None:
    """The CUDA kernel's logic on CPU, where Triton is installed (not in CI).

    A fresh process: the interpreter must be on before Triton is first imported.
    """
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("tests/test_cuda.py runs the compiled kernel")
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _INTERPRETED_KERNEL_CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[
        -3000:
    ]


def test_the_direct_launch_key_tells_apart_what_triton_specializes_on() -> None:
    """NOTE: [launching the compiled kernel directly]: a compiled kernel is reused only
    for arguments Triton would have given the same compiled kernel."""
    from stitch.runtime.kernels import triton_attention

    base = torch.zeros(64, dtype=torch.float16)

    def key(
        pointer: torch.Tensor, *ints: int, dtype: torch.dtype = torch.float16
    ) -> Any:
        pointers = (pointer.to(dtype),) + (base,) * 7
        return triton_attention.specialization_key(
            0, (*pointers, 0.5, 0.0, *ints), (1, False)
        )

    same = key(base[8:], 16, 1, 64)
    assert key(base[16:], 32, 1, 128) == same  # aligned again, same classes of ints
    assert key(base[1:], 16, 1, 64) != same  # a pointer 2 bytes off alignment
    assert key(base[8:], 16, 1, 64, dtype=torch.bfloat16) != same
    assert key(base[8:], 16, 2, 64) != same  # 1 is specialized
    assert key(base[8:], 24, 1, 64) != same  # not a multiple of 16
    assert key(base[8:], 16, 1, 2**31) != same  # beyond int32
