"""Properties over generated inputs.

* For random DAGs of torch ops with random splitting points, the emitted
  function, the split GraphModule and the original graph compute the same
  thing, and the emitted source is exactly what black makes of it.
* For generated statements of the kinds Stitch emits, codegen.layout splits
  them exactly as black does.
"""

from __future__ import annotations

import keyword
import operator
from typing import Any

import black
import pytest
import torch
import torch.fx as fx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils._pytree import tree_flatten

from stitch.codegen import (
    OpMatcher,
    generate_execution_code,
    lower_execution,
    split_graph,
)
from stitch.codegen.emit import BLACK_MODE, render_module_with_black
from stitch.codegen.layout import Layout, _with_black
from stitch.codegen.values import render_float, render_string
from stitch.runtime import compile_execution_fn

from models import ops

FULL, COLUMN = (4, 5), (4, 1)  # every value broadcasts against every other
SPLITTABLE = (
    "stitchtest::scale",
    "stitchtest::pair",
    "stitchtest::add_into",
    "stitchtest::weighted_sum",
)


def _broadcast(*shapes: tuple[int, int]) -> tuple[int, int]:
    return FULL if FULL in shapes else COLUMN


@st.composite
def graphs(draw: st.DrawFn) -> tuple[fx.GraphModule, int]:
    """A random graph over 1-3 inputs of shape FULL, with dead values and tuples."""
    graph = fx.Graph()
    n_inputs = draw(st.integers(1, 3))
    values: list[tuple[fx.Node, tuple[int, int]]] = [
        (graph.placeholder(f"x{i}"), FULL) for i in range(n_inputs)
    ]

    def pick() -> tuple[fx.Node, tuple[int, int]]:
        return draw(st.sampled_from(values))

    for _ in range(draw(st.integers(1, 10))):
        kind = draw(
            st.sampled_from(
                [
                    "unary",
                    "method",
                    "binary",
                    "sub_alpha",
                    "max",
                    "scale",
                    "pair",
                    "add_into",
                    "weighted_sum",
                ]
            )
        )
        (a, sa), (b, sb) = pick(), pick()
        if kind == "unary":
            fn = draw(
                st.sampled_from([torch.sin, torch.tanh, torch.relu, operator.neg])
            )
            values.append((graph.call_function(fn, (a,)), sa))
        elif kind == "method":
            name = draw(st.sampled_from(["sigmoid", "cos", "abs"]))
            values.append((graph.call_method(name, (a,)), sa))
        elif kind == "binary":
            fn = draw(st.sampled_from([torch.add, operator.mul, torch.maximum]))
            values.append((graph.call_function(fn, (a, b)), _broadcast(sa, sb)))
        elif kind == "sub_alpha":
            alpha = draw(st.sampled_from([0.5, -2.0]))
            node = graph.call_function(torch.sub, (a, b), {"alpha": alpha})
            values.append((node, _broadcast(sa, sb)))
        elif kind == "max":
            pair = graph.call_function(torch.max, (a,), {"dim": -1, "keepdim": True})
            values.append((graph.call_function(operator.getitem, (pair, 0)), COLUMN))
        elif kind == "scale":
            alpha = draw(st.sampled_from([0.5, -1.0, 3.0]))
            values.append((graph.call_function(ops.scale, (a, alpha)), sa))
        elif kind == "pair":
            pair = graph.call_function(ops.pair.default, (a,))
            for index in draw(
                st.lists(st.sampled_from([0, 1]), max_size=2, unique=True)
            ):
                values.append(
                    (graph.call_function(operator.getitem, (pair, index)), sa)
                )
        elif kind == "add_into":
            shape = _broadcast(sa, sb)
            like = a if sa == shape else b
            out = graph.call_function(torch.empty_like, (like,))
            graph.call_function(ops.add_into, (a, b, out))
            values.append((out, shape))
        else:
            node = graph.call_function(
                ops.weighted_sum, (), {"xs": [a, b], "weights": [0.25, -1.5]}
            )
            values.append((node, _broadcast(sa, sb)))

    picked = draw(
        st.lists(st.sampled_from([n for n, _ in values]), min_size=1, max_size=4)
    )
    structure = draw(st.sampled_from(["single", "tuple", "list", "nested"]))
    if structure == "single":
        output: Any = picked[0]
    elif structure == "tuple":
        output = tuple(picked)
    elif structure == "list":
        output = list(picked)
    else:
        output = (picked[0], {"rest": list(picked[1:]), "none": None}, 3)
    graph.output(output)
    gm = fx.GraphModule(torch.nn.Module(), graph)
    gm.graph.lint()
    return gm, n_inputs


def _assert_same(expected: Any, actual: Any) -> None:
    expected_leaves, expected_spec = tree_flatten(expected)
    actual_leaves, actual_spec = tree_flatten(actual)
    assert actual_spec == expected_spec
    for e, a in zip(expected_leaves, actual_leaves, strict=True):
        if isinstance(e, torch.Tensor):
            torch.testing.assert_close(a, e, rtol=0, atol=0, equal_nan=True)
        else:
            assert a == e


@pytest.mark.slow
@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    built=graphs(),
    splitting=st.lists(st.sampled_from(SPLITTABLE), unique=True),
    seed=st.integers(0, 2**16),
)
def test_emitted_function_matches_split_and_original(
    built: tuple[fx.GraphModule, int], splitting: list[str], seed: int
) -> None:
    gm, n_inputs = built
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(FULL, generator=gen) for _ in range(n_inputs)]
    expected = gm(*[x.clone() for x in inputs])

    split_gm, items = split_graph(gm, splitting)
    code, names, consts = generate_execution_code(split_gm)
    assert generate_execution_code(split_gm)[0] == code
    # black defines the format: the source is what black makes of the one-line
    # rendering, and black leaves it as it is.
    assert code == render_module_with_black(lower_execution(split_gm)[0])
    assert black.format_str(code, mode=BLACK_MODE) == code
    fn = compile_execution_fn(code, dict(split_gm.named_children()), names, consts)

    # Splitting pieces hold the splitting ops (with their getitems and output
    # buffers), the other pieces everything else; nothing is lost or duplicated.
    matcher = OpMatcher.parse(splitting)
    split_ops = sum(matcher.matches(n) for n in gm.graph.nodes)
    for item in items:
        for node in item.graph.graph.nodes:
            if node.op == "call_function" and node.target not in (
                operator.getitem,
                torch.empty_like,
            ):
                assert (
                    matcher.matches(node) == item.is_splitting_graph
                ), node.format_node()
    assert split_ops == sum(
        matcher.matches(n) for i in items for n in i.graph.graph.nodes
    )
    _assert_same(expected, split_gm(*[x.clone() for x in inputs]))
    _assert_same(expected, fn(*[x.clone() for x in inputs]))


# -- layout: generated statements against black --------------------------------------------

_RESERVED = {"async", "await", "print", "match", "case", "type", "_"}


def _is_name(name: str) -> bool:
    return not (
        keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in _RESERVED
    )


names = (
    st.text("abcxyz_0123456789", min_size=1, max_size=40)
    .map(lambda t: "v" + t)
    .filter(_is_name)
)
long_names = st.integers(1, 100).map(lambda n: "n" * n)
any_name = st.one_of(names, long_names)
dotted = st.lists(names, min_size=2, max_size=4).map(".".join)
literals = st.one_of(
    st.integers(-(2**70), 2**70).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(render_float),
    st.text(max_size=20).map(render_string),
    st.binary(max_size=8).map(render_string),
    st.sampled_from(["None", "True", "False", "..."]),
    st.integers(0, 200).map(lambda i: f"__vllm_consts__[{i}]"),
)
callees = st.one_of(
    any_name,
    dotted,
    st.integers(0, 200).map(lambda i: f"__vllm_submods__[{i}]"),
    st.integers(0, 200).map(lambda i: f"__vllm_consts__[{i}]"),
)


def _containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    items = st.lists(children, max_size=6)
    kwargs = st.lists(st.tuples(names, children), max_size=3)
    return st.one_of(
        st.tuples(callees, items, kwargs).map(
            lambda c: f"{c[0]}({', '.join(c[1] + [f'{k}={v}' for k, v in c[2]])})"
        ),
        st.tuples(any_name, children).map(lambda c: f"{c[0]}[{c[1]}]"),
        st.tuples(
            st.integers(0, 9).map(lambda i: f"__vllm_consts__[{i}]"), names, items
        ).map(lambda c: f"{c[0]}.{c[1]}({', '.join(c[2])})"),
        items.map(lambda i: "(" + (f"{i[0]}," if len(i) == 1 else ", ".join(i)) + ")"),
        items.map(lambda i: "[" + ", ".join(i) + "]"),
        st.lists(st.tuples(literals, children), max_size=4).map(
            lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}"
        ),
    )


expressions = st.recursive(st.one_of(any_name, literals), _containers, max_leaves=40)
calls = st.tuples(callees, st.lists(expressions, max_size=12)).map(
    lambda c: f"{c[0]}({', '.join(c[1])})"
)
plain_arguments = st.one_of(
    any_name,
    st.integers(0, 300).map(lambda i: f"__vllm_consts__[{i}]"),
    st.sampled_from(["0.25", "-1.5", "7", "1e-300", "None"]),
    st.tuples(names, any_name).map(lambda kv: f"{kv[0]}={kv[1]}"),
)
plain_calls = st.tuples(
    st.lists(names, max_size=6),
    callees,
    st.lists(plain_arguments, min_size=2, max_size=40),
).map(
    lambda c: (f"{', '.join(c[0])} = " if c[0] else "") + f"{c[1]}({', '.join(c[2])})"
)
# Several targets, up to a line's width and beyond: the value in parentheses of
# its own, or the targets split (layout._split_targets).
many_targets = st.lists(st.one_of(names, long_names), min_size=2, max_size=12).map(
    ", ".join
)
split_targets = st.one_of(
    st.tuples(
        many_targets, callees, st.lists(plain_arguments, min_size=2, max_size=20)
    ).map(lambda c: f"{c[0]} = {c[1]}({', '.join(c[2])})"),
    st.tuples(
        many_targets,
        st.sampled_from(["__vllm_submods__", "__vllm_dispatch__[n0]", "table[size]"]),
    ).map(lambda c: f"{c[0]} = {c[1]}"),
)
statements = st.one_of(
    plain_calls,
    split_targets,
    st.tuples(
        st.lists(st.one_of(any_name, st.just("_")), min_size=1, max_size=8), calls
    ).map(lambda c: f"{', '.join(c[0])} = {c[1]}" if c[0] != ["_"] else f"x = {c[1]}"),
    st.tuples(any_name, expressions).map(lambda c: f"{c[0]} = {c[1]}"),
    calls,
    st.lists(any_name, min_size=1, max_size=12).map(lambda n: "del " + ", ".join(n)),
    expressions.map(lambda e: f"return {e}"),
    st.lists(any_name, max_size=12, unique=True).map(
        lambda p: f"def {'f' * 30}({', '.join([*p, '*', '__vllm_submods__'])}):"
    ),
    st.tuples(st.integers(1, 90), st.integers(0, 500), st.booleans()).map(
        lambda c: f"def {'f' * c[0]}("
        + ", ".join([f"p{i}" for i in range(c[1])] + (["*", "kw"] if c[2] else []))
        + "):"
    ),
)

_TARGETS = ", ".join(f"target_{i}" for i in range(5))


@pytest.mark.parametrize(
    "statement",
    [
        # The piece call of a deep model: ``a, b = (`` fits, ``a, b = f(`` not.
        f"{_TARGETS}, mm_default_3 = submod_2({', '.join(f'arg_{i}' for i in range(9))})",
        f"{_TARGETS}, x = submod_2({', '.join(f'argument_{i:02}' for i in range(9))})",
        # Targets too wide for ``a, b = (``: split one per line.
        f"{_TARGETS}, {_TARGETS.upper()} = submod_2(a, b)",
        ", ".join(f"submod_{i}" for i in range(161)) + " = __vllm_submods__",
        ", ".join(f"submod_{i}" for i in range(161)) + " = __vllm_dispatch__[n0]",
        f"{_TARGETS}, pieces = __vllm_dispatch__[n0]",
        # A value too wide for a line of its own: black's general split.
        f"{_TARGETS} = {'t' * 90}",
        f"{_TARGETS} = __vllm_consts__[3](a, b)",
    ],
)
@pytest.mark.parametrize("depth", [0, 1])
def test_several_targets_split_as_black_does(statement: str, depth: int) -> None:
    assert Layout()(statement, depth) == _with_black(statement, depth)


_SHARED = Layout()  # splits of earlier examples are reused for later ones


@pytest.mark.slow
@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(statement=statements, depth=st.sampled_from([0, 1]))
def test_layout_splits_statements_as_black_does(statement: str, depth: int) -> None:
    if statement.startswith("def "):
        depth = 0
    expected = _with_black(statement, depth)
    assert Layout()(statement, depth) == expected
    assert _SHARED(statement, depth) == expected
