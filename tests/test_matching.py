"""Splitting at any call target, and saying when an entry matched nothing.

Graphs here come from Dynamo (a backend that keeps the graph it is handed), so
the nodes have the forms a real model's graph has: torch functions kept as they
are, Tensor methods, higher-order ops.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from stitch.codegen import split_graph
from stitch.codegen.matching import OpMatcher, entry_label
from stitch.runtime import CompilationConfig, StitchBackend
from stitch.runtime.config import DEFAULT_SPLITTING_OPS


def dynamo_graph(fn: Callable[..., Any], *args: Any) -> fx.GraphModule:
    """The FX graph Dynamo hands a backend for ``fn(*args)`` (one graph, no breaks)."""
    graphs: list[fx.GraphModule] = []

    def keep(gm: fx.GraphModule, example_inputs: Any) -> Any:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=keep, fullgraph=True)(*args)
    assert len(graphs) == 1
    return graphs[0]


def split_targets(gm: fx.GraphModule, splitting_ops: Any) -> list[list[Any]]:
    """The call targets of each splitting piece."""
    _, items = split_graph(gm, splitting_ops)
    return [
        [
            n.target
            for n in item.graph.graph.nodes
            if n.op in ("call_function", "call_method")
            and n.target is not operator.getitem
        ]
        for item in items
        if item.is_splitting_graph
    ]


def attention(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    q = (x @ w).relu()
    a = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    b = F.scaled_dot_product_attention(a * 2, q, q)
    return (b @ w).sin()


ARGS = (torch.randn(1, 2, 8, 4), torch.randn(4, 4))


@pytest.mark.parametrize(
    "entry",
    [
        "aten::scaled_dot_product_attention",
        "aten::scaled_dot_product_attention.default",
        torch.ops.aten.scaled_dot_product_attention,
        F.scaled_dot_product_attention,
        "torch.nn.functional.scaled_dot_product_attention",
        "torch._C._nn.scaled_dot_product_attention",
    ],
    ids=[
        "aten-name",
        "aten-overload-name",
        "packet",
        "object",
        "dotted",
        "dotted-builtin",
    ],
)
def test_every_spelling_of_sdpa_splits_the_torch_function_dynamo_keeps(
    entry: Any,
) -> None:
    gm = dynamo_graph(attention, *ARGS)
    sdpa = torch._C._nn.scaled_dot_product_attention
    assert sdpa in [n.target for n in gm.graph.nodes]  # Dynamo kept the builtin
    # Two calls with an op between them: two splitting pieces.
    assert split_targets(gm, [entry]) == [[sdpa], [sdpa]]


def test_tensor_method_entries_match_call_method_nodes() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return (x * 2).softmax(-1).cos()

    gm = fx.symbolic_trace(f)
    for entry in ("aten::softmax", torch.Tensor.softmax, "torch.Tensor.softmax"):
        assert split_targets(gm, [entry]) == [["softmax"]], entry


@torch._dynamo.allow_in_graph
def my_attention(q: torch.Tensor) -> torch.Tensor:
    return torch.softmax(q @ q.transpose(-1, -2), -1) @ q


def test_a_users_function_in_the_graph_matches_by_object_and_by_dotted_name() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return my_attention(x.relu()).sin()

    gm = dynamo_graph(f, torch.randn(2, 4, 4))
    for entry in (my_attention, f"{my_attention.__module__}.my_attention"):
        assert split_targets(gm, [entry]) == [[my_attention]], entry


def flex(q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    q = q @ w
    out = flex_attention(q, q, q, score_mod=lambda s, b, h, i, j: s + (i - j) * 0.1)
    return (out @ w).relu()


@pytest.mark.slow
@pytest.mark.parametrize(
    "entry",
    ["higher_order::flex_attention", torch.ops.higher_order.flex_attention],
    ids=["name", "object"],
)
def test_higher_order_op_splits_and_runs(entry: Any) -> None:
    q, w = torch.randn(1, 2, 16, 8), torch.randn(8, 8)
    gm = dynamo_graph(flex, q, w)
    assert split_targets(gm, [entry]) == [[torch.ops.higher_order.flex_attention]]
    torch._dynamo.reset()
    backend = StitchBackend(backend="eager", disable_cache=True, splitting_ops=[entry])
    compiled = torch.compile(flex, backend=backend)
    torch.testing.assert_close(compiled(q, w), flex(q, w))
    assert [r.splitting for r in backend.compiled[0].reports] == [False, True, False]


def test_entries_are_named_without_object_ids() -> None:
    assert entry_label(F.scaled_dot_product_attention) == (
        "torch._C._nn.scaled_dot_product_attention"
    )
    assert entry_label(torch.matmul) == "torch.matmul"
    assert entry_label(torch.Tensor.softmax) == "torch.Tensor.softmax"
    assert (
        entry_label(torch.ops.higher_order.flex_attention)
        == "higher_order::flex_attention"
    )
    assert entry_label(torch.ops.aten.mm.default) == "aten::mm.default"


@pytest.mark.parametrize(
    "bad, why",
    [
        ("attention", "nor a dotted name"),
        ("stitch:attention", "is not of the form 'ns::op'"),
        ("torch..matmul", "nor a dotted name"),
        (42, "(type int) must be a string"),
        (None, "(type NoneType)"),
    ],
)
def test_an_entry_that_is_neither_name_nor_callable_is_a_config_error(
    bad: Any, why: str
) -> None:
    with pytest.raises(ValueError, match="splitting_ops") as info:
        CompilationConfig(splitting_ops=[bad])
    assert why in str(info.value)


# -- entries that match nothing ------------------------------------------------------


def stitch_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "stitch" and r.levelno >= logging.WARNING
    ]


def with_break(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    y = attention(x, w)
    torch._dynamo.graph_break()
    return attention(y, w)


def test_a_typo_warns_once_per_backend_naming_the_close_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch._dynamo.reset()
    ops = ["aten::scaled_dot_product_atention", "aten::scaled_dot_product_attention"]
    backend = StitchBackend(backend="eager", disable_cache=True, splitting_ops=ops)
    with caplog.at_level(logging.INFO, logger="stitch"):
        torch.compile(with_break, backend=backend)(*ARGS)
    assert len(backend.compiled) == 2  # the graph break: two graphs, one backend
    (message,) = stitch_warnings(caplog)
    assert "'aten::scaled_dot_product_atention' matched no node of graph 1" in message
    assert "'aten::scaled_dot_product_attention'" in message


def test_an_inlined_function_warns_with_the_way_to_keep_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def inlined(q: torch.Tensor) -> torch.Tensor:
        return q.relu()

    def f(x: torch.Tensor) -> torch.Tensor:
        return inlined(x) * 2

    torch._dynamo.reset()
    backend = StitchBackend(
        backend="eager", disable_cache=True, splitting_ops=[inlined]
    )
    with caplog.at_level(logging.WARNING, logger="stitch"):
        torch.compile(f, backend=backend)(torch.randn(3))
    (message,) = stitch_warnings(caplog)
    assert "Dynamo inlines Python functions" in message
    assert "allow_in_graph" in message


def test_absent_defaults_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    torch._dynamo.reset()
    backend = StitchBackend(backend="eager", disable_cache=True)
    assert list(backend.config.splitting_ops) == list(DEFAULT_SPLITTING_OPS)
    with caplog.at_level(logging.INFO, logger="stitch"):
        torch.compile(lambda x: (x @ x).relu(), backend=backend)(torch.randn(4, 4))
    assert stitch_warnings(caplog) == []
    assert any(
        "no splitting op matched graph 1" in r.getMessage() for r in caplog.records
    )


class SelfAttention(torch.nn.Module):
    """A model's own attention module around torch's: the warning names the
    innermost (``nn_module_stack`` holds both)."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # need_weights=True (the default): bmm and softmax, no SDPA call
        return self.mha(x, x, x)[0]


class AttentionStack(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(SelfAttention() for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers[1](self.layers[0](x))
        torch._dynamo.graph_break()
        return self.layers[3](self.layers[2](x))


def test_attention_modules_with_nothing_to_split_warn_once_naming_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """NOTE: [nothing to split where there is attention] in split_warnings.py."""
    torch._dynamo.reset()
    backend = StitchBackend(backend="eager", disable_cache=True)
    model = AttentionStack().eval()
    x = torch.randn(2, 5, 8)
    with caplog.at_level(logging.INFO, logger="stitch"), torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x))
    assert len(backend.compiled) == 2  # the graph break: two graphs, one report
    (message,) = stitch_warnings(caplog)
    assert message.startswith(
        "graph 1 holds attention modules (layers.0.mha (MultiheadAttention), "
        "layers.1.mha (MultiheadAttention)) but no splitting op"
    )
    assert "(SelfAttention)" not in message
    assert "compiles as one piece" in message
    assert "torch.library.custom_op" in message
    # not a transformers attention: nothing about transformers' dispatch
    assert "attn_implementation" not in message


def test_many_attention_modules_are_counted_after_the_first_few(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch._dynamo.reset()
    model = torch.nn.Sequential(*(SelfAttention() for _ in range(5))).eval()
    with caplog.at_level(logging.WARNING, logger="stitch"), torch.no_grad():
        torch.compile(
            model, backend=StitchBackend(backend="eager", disable_cache=True)
        )(torch.randn(2, 5, 8))
    (message,) = stitch_warnings(caplog)
    assert (
        "(0.mha (MultiheadAttention), 1.mha (MultiheadAttention), "
        "2.mha (MultiheadAttention) and 2 more)" in message
    )


def test_a_graph_without_attention_modules_is_reported_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8)
    )
    with caplog.at_level(logging.INFO, logger="stitch"), torch.no_grad():
        torch.compile(
            model, backend=StitchBackend(backend="eager", disable_cache=True)
        )(torch.randn(2, 8))
    assert stitch_warnings(caplog) == []
    (record,) = [
        r for r in caplog.records if "no splitting op matched graph 1" in r.getMessage()
    ]
    assert record.levelno == logging.INFO


def test_unmatched_reports_each_missing_entry_with_close_names() -> None:
    gm = dynamo_graph(attention, *ARGS)
    matcher = OpMatcher.parse(
        ["stitch::atention", "aten::scaled_dot_product_atention", F.relu]
    )
    missing = {entry.label: close for entry, close in matcher.unmatched(gm)}
    assert (
        missing["aten::scaled_dot_product_atention"][0]
        == "aten::scaled_dot_product_attention"
    )
    assert missing["stitch::atention"] == []
    assert set(missing) == {
        "stitch::atention",
        "aten::scaled_dot_product_atention",
        "torch.nn.functional.relu",
    }
