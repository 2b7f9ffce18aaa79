"""generate_execution_code: targeted properties of the emitted source.

The full text of the reference cases is pinned by tests/test_golden.py; the tests
here check one property each (a signature, a const slot, a ``del``), so a small
change in the emitted text does not churn them.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import os
import re
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F

from stitch.codegen import generate_execution_code, module_path_of, split_graph
from stitch.codegen.readable import readable_names
from stitch.codegen.split import IS_SPLITTING_META
from stitch.core.errors import StitchCodegenError
from stitch.runtime import compile_execution_fn

import models
from models import CASES, emit_case, randn

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


def functions(code: str) -> dict[str, ast.FunctionDef]:
    return {
        node.name: node
        for node in ast.parse(code).body
        if isinstance(node, ast.FunctionDef)
    }


def body_of(fn: ast.FunctionDef) -> list[ast.stmt]:
    body = list(fn.body)
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
    ):
        body = body[1:]  # docstring
    return body


def loaded_or_deleted(node: ast.AST) -> set[str]:
    return {
        n.id
        for n in ast.walk(node)
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Load, ast.Del))
    }


def loaded_names(node: ast.AST) -> set[str]:
    return {
        n.id
        for n in ast.walk(node)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }


def load(
    code: str, split_gm: fx.GraphModule, names: list[str], consts: list[Any]
) -> Any:
    return compile_execution_fn(code, dict(split_gm.named_children()), names, consts)


# -- hand-built split graphs ---------------------------------------------------------


def hand_split(
    build_piece: Callable[[fx.Graph, list[fx.Node]], Any],
    *,
    inputs: int = 1,
    inlined: bool = True,
    patch: Callable[[fx.GraphModule], None] | None = None,
) -> fx.GraphModule:
    """A split graph with one piece ``submod_0`` whose body ``build_piece`` writes.

    ``patch`` may edit the piece's nodes after the GraphModule exists: arguments
    FX's own code generator cannot print (arbitrary objects) go in that way.
    """
    piece = fx.Graph()
    params = [piece.placeholder(f"a{i}") for i in range(inputs)]
    piece.output(build_piece(piece, params))
    piece_gm = fx.GraphModule(torch.nn.Module(), piece)
    piece_gm.meta[IS_SPLITTING_META] = inlined
    root = torch.nn.Module()
    root.add_module("submod_0", piece_gm)
    top = fx.Graph()
    args = [top.placeholder(f"x{i}") for i in range(inputs)]
    top.output(top.call_module("submod_0", tuple(args)))
    split_gm = fx.GraphModule(root, top)
    if patch is not None:
        patch(split_gm.submod_0)
    return split_gm


def emit_and_load(split_gm: fx.GraphModule) -> tuple[str, list[Any], Any]:
    code, names, consts = generate_execution_code(split_gm)
    return code, consts, load(code, split_gm, names, consts)


def echo_piece(args: tuple[Any, ...], kwargs: dict[str, Any]) -> fx.GraphModule:
    """One inlined piece calling ``models.echo(*args, **kwargs)`` on literal values."""

    def build(g: fx.Graph, params: list[fx.Node]) -> fx.Node:
        return g.call_function(models.echo, (params[0],))

    def patch(gm: fx.GraphModule) -> None:
        (node,) = [n for n in gm.graph.nodes if n.op == "call_function"]
        (param,) = [n for n in gm.graph.nodes if n.op == "placeholder"]
        node.args = (param, *args)
        node.kwargs = kwargs

    return hand_split(build, patch=patch)


def same(a: Any, b: Any) -> bool:
    """Equal with the same types, ``-0.0`` told from ``0.0`` and ``nan`` equal to itself."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, slice):
        return same((a.start, a.stop, a.step), (b.start, b.stop, b.step))
    return a == b


# -- determinism ---------------------------------------------------------------------

DETERMINISM_CASES = [
    "two_layer_attention",
    "llama_dynamic_batch",
    "device_dtype_consts",
    "inlined_constants",
    "nested_outputs",
]


@pytest.mark.parametrize("name", DETERMINISM_CASES)
def test_same_graph_gives_the_same_source(name: str) -> None:
    emitted = emit_case(name)
    again, names, consts = generate_execution_code(emitted.split_gm)
    assert again == emitted.code
    assert names == emitted.submod_names
    assert len(consts) == len(emitted.consts)
    assert all(a is b for a, b in zip(consts, emitted.consts, strict=True))
    # A fresh trace of the same model emits the same bytes too.
    case = CASES[name]()
    split_gm, _ = split_graph(case.gm, list(case.splitting_ops))
    assert generate_execution_code(split_gm)[0] == emitted.code


_SUBPROCESS_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import models
print(json.dumps({{n: models.emit_case(n).code for n in {names!r}}}))
"""


@pytest.mark.slow
def test_same_source_in_another_process() -> None:
    script = _SUBPROCESS_SCRIPT.format(tests=str(TESTS_DIR), names=DETERMINISM_CASES)
    env = {**os.environ, "PYTHONHASHSEED": "1234"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    codes = json.loads(result.stdout)
    for name in DETERMINISM_CASES:
        assert codes[name] == emit_case(name).code, name


# -- structure of execution_fn -------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_signature_is_placeholders_in_graph_order_then_submods(name: str) -> None:
    emitted = emit_case(name)
    fn = functions(emitted.code)["execution_fn"]
    placeholders = [n for n in emitted.split_gm.graph.nodes if n.op == "placeholder"]
    # Named after the model's paths where Dynamo spelled them (readable.py).
    readable = readable_names(placeholders)
    assert [a.arg for a in fn.args.args] == [
        readable.get(n.name, n.name) for n in placeholders
    ]
    assert [a.arg for a in fn.args.kwonlyargs] == ["__vllm_submods__"]
    assert fn.args.defaults == [] and fn.args.kw_defaults == [None]
    assert fn.args.vararg is None and fn.args.kwarg is None


def test_signature_keeps_unused_placeholders() -> None:
    fn = functions(emit_case("dead_values").code)["execution_fn"]
    assert [a.arg for a in fn.args.args] == ["x", "unused", "y"]


def _piece_locals(code: str) -> list[str]:
    """The names execution_fn's first statement unpacks ``__vllm_submods__`` into."""
    first = body_of(functions(code)["execution_fn"])[0]
    assert isinstance(first, ast.Assign), ast.unparse(first)
    assert ast.unparse(first.value) == "__vllm_submods__"
    (target,) = first.targets
    assert isinstance(target, ast.Tuple)
    return [elt.id for elt in target.elts]  # type: ignore[attr-defined]


def _called_names(code: str) -> list[str]:
    """Names execution_fn calls, in source order."""
    return [
        node.func.id
        for stmt in body_of(functions(code)["execution_fn"])
        for node in ast.walk(stmt)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    ]


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_pieces_are_bound_once_and_called_in_order(name: str) -> None:
    emitted = emit_case(name)
    compiled = [i.submod_name for i in emitted.items if not i.is_splitting_graph]
    assert emitted.submod_names == compiled
    if not compiled:
        assert "__vllm_submods__" not in ast.unparse(
            body_of(functions(emitted.code)["execution_fn"])[0]
        )
        return
    # Piece i of __vllm_submods__ is bound to a local named after it, and those
    # locals are called in graph order.
    names = _piece_locals(emitted.code)
    assert names == compiled
    assert [c for c in _called_names(emitted.code) if c in names] == compiled


def test_one_op_pieces_run_at_their_call_site() -> None:
    emitted = emit_case("many_pieces")
    splitting = [i for i in emitted.items if i.is_splitting_graph]
    assert set(functions(emitted.code)) == {"execution_fn"}
    calls = [
        ast.unparse(node.func)
        for node in ast.walk(functions(emitted.code)["execution_fn"])
        if isinstance(node, ast.Call)
    ]
    assert calls.count("stitchtest_scale") == len(splitting) == 6


def _two_piece_functions(first: Any, second: Any, third: Any = None) -> fx.GraphModule:
    """A split graph whose splitting pieces each run ``fn(x)`` then ``relu``."""
    root = torch.nn.Module()
    top = fx.Graph()
    value = top.placeholder("x")
    for i, fn in enumerate([f for f in (first, second, third) if f is not None]):
        piece = fx.Graph()
        p = piece.placeholder("a")
        piece.output(piece.call_function(torch.relu, (piece.call_function(fn, (p,)),)))
        piece_gm = fx.GraphModule(torch.nn.Module(), piece)
        piece_gm.meta[IS_SPLITTING_META] = True
        root.add_module(f"submod_{i}", piece_gm)
        value = top.call_module(f"submod_{i}", (value,))
    top.output(value)
    return fx.GraphModule(root, top)


def _times(k: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def times(x: torch.Tensor) -> torch.Tensor:
        return x * k

    return times


def test_identical_pieces_share_one_function() -> None:
    times_2, times_3 = _times(2.0), _times(3.0)
    code, consts, fn = emit_and_load(_two_piece_functions(times_2, times_3, times_2))
    defined = functions(code)
    # Pieces 0 and 2 call the same function object: one function runs both.
    # Piece 1 has the same structure but calls another object: its own function.
    assert set(defined) == {
        "execution_fn",
        "__vllm_inlined_submods__0",
        "__vllm_inlined_submods__1",
    }
    callees = [
        node.func.id
        for node in ast.walk(defined["execution_fn"])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    ]
    assert callees == [
        "__vllm_inlined_submods__0",
        "__vllm_inlined_submods__1",
        "__vllm_inlined_submods__0",
    ]
    assert ast.get_docstring(defined["__vllm_inlined_submods__0"]) == (
        "Inlined piece submod_0 and 1 identical piece."
    )
    assert consts == [times_2, times_3]
    (x,) = randn(0, (5,))
    torch.testing.assert_close(fn(x), (((x * 2).relu() * 3).relu() * 2).relu())


def test_piece_outputs_are_unpacked_in_one_assignment() -> None:
    code = emit_case("getitem_tuple_outputs").code
    main = functions(code)["execution_fn"]
    unpacks = [
        ast.unparse(s)
        for s in body_of(main)
        if isinstance(s, ast.Assign) and isinstance(s.targets[0], ast.Tuple)
    ]
    assert unpacks == [
        "submod_1, submod_3 = __vllm_submods__",
        "getitem, getitem_1 = __vllm_inlined_submods__0(x)",
        "getitem, getitem_3 = submod_1(getitem, y)",
    ]
    # No piece result is indexed afterwards.
    assert not [n for n in ast.walk(main) if isinstance(n, ast.Subscript)]
    # Inside a piece, a tuple-returning op is still indexed.
    inlined = ast.unparse(functions(code)["__vllm_inlined_submods__0"])
    assert "pair[0]" in inlined and "pair[1]" in inlined


def test_unused_piece_outputs_unpack_to_underscore() -> None:
    def build(g: fx.Graph, p: list[fx.Node]) -> Any:
        return (
            g.call_function(torch.neg, (p[0],)),
            p[0],
            g.call_function(torch.abs, (p[0],)),
        )

    split_gm = hand_split(build, inlined=False)
    top = split_gm.graph
    (call,) = [n for n in top.nodes if n.op == "call_module"]
    (output,) = [n for n in top.nodes if n.op == "output"]
    with top.inserting_after(call):
        first = top.call_function(operator.getitem, (call, 0))
    with top.inserting_after(first):
        third = top.call_function(operator.getitem, (call, 2))
    output.args = ((third, first),)
    split_gm.recompile()
    code, _, fn = emit_and_load(split_gm)
    _, unpack = [
        ast.unparse(s)
        for s in body_of(functions(code)["execution_fn"])
        if isinstance(s, ast.Assign)
    ]
    # Named after the values inside the piece; `abs` would shadow the builtin.
    assert unpack == "neg, _, abs_1 = submod_0(x0)"
    (x,) = randn(0, (3,))
    absolute, negative = fn(x)
    torch.testing.assert_close(absolute, x.abs())
    torch.testing.assert_close(negative, -x)


# -- call targets ----------------------------------------------------------------------


def module_assignments(code: str) -> dict[str, str]:
    """``{alias: value}`` for every module-level assignment."""
    return {
        stmt.targets[0].id: ast.unparse(stmt.value)
        for stmt in ast.parse(code).body
        if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name)
    }


def test_call_targets_are_qualified_names_with_imports() -> None:
    def build(g: fx.Graph, p: list[fx.Node]) -> Any:
        a = g.call_function(torch.relu, (p[0],))
        b = g.call_function(F.softmax, (a,), {"dim": -1})
        c = g.call_function(operator.mul, (b, 2))
        d = g.call_function(torch.ops.aten.add.Tensor, (c, p[0]), {"alpha": 3})
        e = g.call_function(torch.Tensor.add, (d, 1))
        f = g.call_function(torch.ops.aten.sub, (e, 0.5))
        n = g.call_function(max, (2, 3))
        return (f, n)

    split_gm = hand_split(build)
    code, consts, fn = emit_and_load(split_gm)
    assert consts == []
    imports = [line for line in code.splitlines() if line.startswith("import ")]
    assert imports == ["import operator", "import torch", "import torch.nn.functional"]
    body = ast.unparse(functions(code)["__vllm_inlined_submods__0"])
    for expr in (
        "torch.relu(",
        "torch.nn.functional.softmax(relu, dim=-1)",
        "operator.mul(",
        "torch.Tensor.add(",
        "max(2, 3)",
    ):
        assert expr in body, expr
    (x,) = randn(0, (3, 4))
    out, n = fn(x)
    assert n == 3
    torch.testing.assert_close(out, (F.softmax(x.relu(), dim=-1) * 2 + 3 * x) + 1 - 0.5)


def test_torch_ops_targets_are_bound_once_at_module_level() -> None:
    code = emit_case("consecutive_splitting_ops").code
    assert module_assignments(code) == {
        "stitchtest_scale": "torch.ops.stitchtest.scale",
        "stitchtest_add_into": "torch.ops.stitchtest.add_into",
    }
    body = ast.unparse(functions(code)["__vllm_inlined_submods__1"])
    assert body.count("stitchtest_scale(") == 2
    assert "torch.ops" not in body

    # An overload other than .default keeps its name; the packet and its
    # .default overload are two targets, bound under two names.
    def build(g: fx.Graph, p: list[fx.Node]) -> Any:
        a = g.call_function(torch.ops.aten.add.Tensor, (p[0], p[0]))
        b = g.call_function(torch.ops.aten.add, (a, 1))
        return g.call_function(torch.ops.aten.neg.default, (b,))

    code, _, fn = emit_and_load(hand_split(build))
    assert module_assignments(code) == {
        "aten_add_Tensor": "torch.ops.aten.add.Tensor",
        "aten_add": "torch.ops.aten.add",
        "aten_neg": "torch.ops.aten.neg.default",
    }
    (x,) = randn(0, (3,))
    torch.testing.assert_close(fn(x), -(x + x + 1))


def _impostor(x: torch.Tensor) -> torch.Tensor:
    return x * 5


# Claims to be torch.neg; the emitted name must resolve to the very same object.
_impostor.__module__, _impostor.__name__, _impostor.__qualname__ = "torch", "neg", "neg"


def test_targets_that_cannot_be_named_go_to_consts() -> None:
    def local(x: torch.Tensor) -> torch.Tensor:
        return x * 3

    lam = lambda x: x - 1  # noqa: E731

    def build(g: fx.Graph, p: list[fx.Node]) -> Any:
        a = g.call_function(local, (p[0],))
        b = g.call_function(_impostor, (a,))
        c = g.call_function(lam, (b,))
        return g.call_function(local, (c,))

    code, consts, fn = emit_and_load(hand_split(build))
    assert consts == [local, _impostor, lam]
    # Each is read from the constants table once, into a module-level alias.
    assert module_assignments(code) == {
        "local": "__vllm_consts__[0]",
        "neg": "__vllm_consts__[1]",
        "_lambda_": "__vllm_consts__[2]",
    }
    assert "__vllm_consts__" not in ast.unparse(
        functions(code)["__vllm_inlined_submods__0"]
    )
    (x,) = randn(0, (4,))
    torch.testing.assert_close(fn(x), (x * 3 * 5 - 1) * 3)


def test_a_module_level_function_is_imported_by_name() -> None:
    def build(g: fx.Graph, p: list[fx.Node]) -> Any:
        return g.call_function(models.echo, (p[0], 1), {"k": "v"})

    code, consts, fn = emit_and_load(hand_split(build))
    assert consts == [] and "import models" in code
    assert 'models.echo(x0, 1, k="v")' in code
    assert fn("x") == (("x", 1), {"k": "v"})


# -- argument rendering ----------------------------------------------------------------

LITERALS: list[Any] = [
    0,
    -7,
    2**70,
    0.1,
    1e-300,
    1.7976931348623157e308,
    -0.0,
    0.0,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    False,
    None,
    'it\'s "quoted"\n\t\u00e9\\',
    "",
    b"\x00\xff'\"",
    b"",
    slice(1, None, -2),
    slice(None),
    Ellipsis,
    (),
    (1,),
    [1, [2.5, (3, None)], []],
    {"a": 1, 2: [None, ...], (1, "t"): {"nested": -0.0}},
]


def test_literals_are_written_inline_and_exactly() -> None:
    split_gm = echo_piece(tuple(LITERALS), {"kw": LITERALS[-2], "nan": float("nan")})
    code, consts, fn = emit_and_load(split_gm)
    assert consts == []
    assert "__vllm_consts__" not in code
    for text in (
        'float("nan")',
        'float("inf")',
        'float("-inf")',
        "-0.0",
        "1e-300",
        "2**70",
    ):
        if text == "2**70":
            text = str(2**70)
        assert text in code, text
    args, kwargs = fn("p")
    assert args[0] == "p"
    assert same(list(args[1:]), LITERALS)
    assert same(kwargs, {"kw": LITERALS[-2], "nan": float("nan")})


def test_fx_immutable_containers_are_written_as_literals() -> None:
    # FX stores list and dict arguments as immutable_list/immutable_dict.
    def build(g: fx.Graph, p: list[fx.Node]) -> Any:
        return g.call_function(models.echo, ([p[0], 1.5],), {"d": {"k": [p[0]]}})

    split_gm = hand_split(build)
    (node,) = [n for n in split_gm.submod_0.graph.nodes if n.op == "call_function"]
    assert type(node.args[0]) is fx.immutable_collections.immutable_list
    code, consts, fn = emit_and_load(split_gm)
    assert consts == []
    assert 'models.echo([x0, 1.5], d={"k": [x0]})' in code
    assert fn("v") == ((["v", 1.5],), {"d": {"k": ["v"]}})


class Opaque:
    """An object with no source spelling."""


def test_other_values_become_deduplicated_consts_in_order_of_first_use() -> None:
    opaque = Opaque()
    tensor = torch.arange(3.0)
    cpu_a, cpu_b = torch.device("cpu"), torch.device("cpu")
    args = (
        torch.float16,
        cpu_a,
        [torch.channels_last, {"layout": torch.strided}],
        opaque,
        tensor,
        torch.float16,
        cpu_b,
        opaque,
        torch.Generator,
    )
    kwargs = {"dtype": torch.float16, "obj": (opaque, torch.sparse_coo)}
    code, consts, fn = emit_and_load(echo_piece(args, kwargs))
    # dtypes, layouts, memory formats and devices are written by their torch
    # names; the rest is a slot, deduplicated, in order of first use.
    expected = [opaque, tensor, torch.Generator]
    assert len(consts) == len(expected)
    assert all(c is e for c, e in zip(consts, expected, strict=True))
    body = ast.unparse(functions(code)["execution_fn"])
    assert "torch.float16, torch.device('cpu')" in body
    assert "[torch.channels_last, {'layout': torch.strided}]" in body
    assert "obj=(__vllm_consts__[0], torch.sparse_coo)" in body
    # The header says what each slot holds.
    assert "#   [0] Opaque\n" in code
    assert "#   [1] Tensor(float32, [3], cpu)\n" in code
    assert "0x" not in code and "object at" not in code
    out_args, out_kwargs = fn("p")
    assert out_args[1:] == args[:4] + (tensor,) + args[5:]
    assert out_args[4] is opaque and out_args[5] is tensor
    assert out_kwargs == kwargs


def test_device_dtype_layout_and_memory_format_are_written_as_torch_names() -> None:
    emitted = emit_case("device_dtype_consts")
    assert emitted.consts == []
    body = ast.unparse(functions(emitted.code)["execution_fn"])
    for literal in (
        "dtype=torch.float64",
        "device=torch.device('cpu')",
        "layout=torch.strided",
        "memory_format=torch.contiguous_format",
        "memory_format=torch.preserve_format",
        "dtype=torch.float32",
    ):
        assert literal in body, literal


def test_tensor_constants_are_passed_through_consts() -> None:
    emitted = emit_case("inlined_constants")
    (table,) = emitted.consts
    assert table is emitted.split_gm.table
    (call,) = [
        node
        for node in ast.walk(functions(emitted.code)["execution_fn"])
        if isinstance(node, ast.Call)
        and ast.unparse(node.func).startswith("__vllm_inl")
    ]
    assert [ast.unparse(a) for a in call.args] == ["mul", "__vllm_consts__[0]"]


# -- kwargs and outputs -------------------------------------------------------------


def test_kwargs_at_every_level() -> None:
    def build(g: fx.Graph, p: list[fx.Node]) -> Any:
        s = g.call_function(torch.sum, (p[0],), {"dim": -1, "keepdim": True})
        m = g.call_method("clamp", (s,), {"min": -1.0, "max": 1.0})
        c = g.call_function(torch.cat, (), {"tensors": [m, p[1]], "dim": -1})
        return g.call_function(
            models.echo, (c,), {"nested": {"xs": [c, (s,)], "n": None}}
        )

    code, consts, fn = emit_and_load(hand_split(build, inputs=2))
    body = ast.unparse(functions(code)["__vllm_inlined_submods__0"])
    assert "torch.sum(a0, dim=-1, keepdim=True)" in body
    assert "sum_1.clamp(min=-1.0, max=1.0)" in body
    assert "torch.cat(tensors=[clamp, a1], dim=-1)" in body
    assert "nested={'xs': [cat, (sum_1,)], 'n': None}" in body
    x, y = randn(0, (2, 3), (2, 2))
    (cat,), kwargs = fn(x, y)
    s = x.sum(-1, keepdim=True)
    expected = torch.cat([s.clamp(-1.0, 1.0), y], dim=-1)
    torch.testing.assert_close(cat, expected)
    torch.testing.assert_close(kwargs["nested"]["xs"][0], expected)
    torch.testing.assert_close(kwargs["nested"]["xs"][1][0], s)
    assert kwargs["nested"]["n"] is None


@pytest.mark.parametrize(
    "make_output",
    [
        lambda p, a: a,
        lambda p, a: None,
        lambda p, a: (a,),
        lambda p, a: [a, p[0]],
        lambda p, a: (a, [p[0], (a, None)], {"k": a, "n": 3}),
        lambda p, a: 7,
    ],
    ids=["single", "none", "one-tuple", "list", "nested", "literal"],
)
def test_outputs_of_every_shape(
    make_output: Callable[[list[fx.Node], fx.Node], Any],
) -> None:
    def build(g: fx.Graph, p: list[fx.Node]) -> Any:
        return g.call_function(torch.neg, (p[0],))

    split_gm = hand_split(build)
    top = split_gm.graph
    (output,) = [n for n in top.nodes if n.op == "output"]
    (call,) = [n for n in top.nodes if n.op == "call_module"]
    placeholders = [n for n in top.nodes if n.op == "placeholder"]
    output.args = (make_output(placeholders, call),)
    split_gm.recompile()
    code, _, fn = emit_and_load(split_gm)
    (x,) = randn(0, (3,))
    expected = split_gm(x)
    actual = fn(x)
    assert same(_structure(actual), _structure(expected))
    for e, a in zip(_tensors(expected), _tensors(actual), strict=True):
        torch.testing.assert_close(a, e)


def _structure(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return "T"
    if isinstance(value, (list, tuple)):
        return type(value)(_structure(v) for v in value)
    if isinstance(value, dict):
        return {k: _structure(v) for k, v in value.items()}
    return value


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


# -- del what frees memory -------------------------------------------------------------


def _assigned(stmt: ast.stmt) -> list[str]:
    if not isinstance(stmt, ast.Assign):
        return []
    names = []
    for target in stmt.targets:
        elements = target.elts if isinstance(target, ast.Tuple) else [target]
        names += [e.id for e in elements if isinstance(e, ast.Name) and e.id != "_"]
    return names


def _binds_pieces(stmt: ast.stmt) -> bool:
    """``submod_0, ... = __vllm_submods__`` (or ``= __vllm_dispatch__[size]``)."""
    return isinstance(stmt, ast.Assign) and ast.unparse(stmt.value).startswith(
        ("__vllm_submods__", "__vllm_dispatch__[")
    )


def _check_dels(fn: ast.FunctionDef) -> None:
    """Every bound value is freed right after its last reader.

    Freed means a ``del`` on the next statement, or the name rebound by that
    last reader itself (``x = submod_2(x)``), which releases the old value as
    the call returns.  Nothing is deleted right before the return, and no
    parameter is deleted.
    """
    body = body_of(fn)
    if body and _binds_pieces(body[0]):
        # The compiled pieces: the caller's list holds them, a del frees nothing.
        body = body[1:]
    params = {a.arg for a in fn.args.args}
    deleted = [
        name
        for stmt in body
        if isinstance(stmt, ast.Delete)
        for name in loaded_or_deleted(stmt)
    ]
    assert not params & set(deleted), f"a parameter of {fn.name} is deleted"
    assert isinstance(body[-1], ast.Return)
    bindings = [(i, name) for i, stmt in enumerate(body) for name in _assigned(stmt)]
    for k, (bound_at, name) in enumerate(bindings):
        rebound_at = next(
            (i for i, other in bindings[k + 1 :] if other == name), len(body)
        )
        uses = [
            i
            for i in range(bound_at + 1, min(rebound_at + 1, len(body)))
            if not isinstance(body[i], ast.Delete) and name in loaded_names(body[i])
        ]
        dels = [
            i
            for i in range(bound_at + 1, min(rebound_at, len(body)))
            if isinstance(body[i], ast.Delete) and name in loaded_or_deleted(body[i])
        ]
        where = f"{name!r} bound on statement {bound_at} of {fn.name}"
        assert uses, f"{where} is never used"
        if rebound_at < len(body):
            # Rebound: only by the statement that reads its value last.
            assert max(uses) == rebound_at, f"{where} is rebound before its last use"
            assert dels == [], f"{where} is deleted and rebound"
        elif max(uses) + 1 >= len(body) - 1:
            # Last used by the return or right before it: nothing to free early.
            assert dels == [], f"{where} is deleted right before the return"
        else:
            assert dels == [max(uses) + 1], f"{where}: last use {max(uses)}, del {dels}"


@pytest.mark.parametrize("name", list(CASES))
def test_values_are_deleted_right_after_their_last_use(name: str) -> None:
    for fn in functions(emit_case(name).code).values():
        _check_dels(fn)


@pytest.mark.parametrize("name", list(CASES))
def test_piece_outputs_are_released_before_the_next_piece_runs(name: str) -> None:
    """Run the emitted function with pieces that keep weak references to the
    tensors they return: when a compiled piece is called, every tensor an
    earlier piece returned whose last reader came before this call is gone
    (freed by a ``del`` or by rebinding its name)."""
    emitted = emit_case(name)
    gm = emitted.split_gm
    order = {n: i for i, n in enumerate(gm.graph.nodes)}

    def last_read(node: fx.Node) -> int:
        return max((order[u] for u in node.users), default=order[node])

    # Piece -> its returned values' last readers (by output index, or None).
    last_reads: dict[str, Any] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            getitems = [u for u in n.users if u.target is operator.getitem]
            if getitems and len(getitems) == len(n.users):
                last_reads[n.target] = {u.args[1]: last_read(u) for u in getitems}
            else:
                last_reads[n.target] = last_read(n)
    pending: list[tuple[Any, int, str]] = []  # (weakref, last reader, what)
    checked = 0

    def recording(target: str, piece: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            nonlocal checked
            here = order[next(n for n in gm.graph.nodes if n.target == target)]
            for ref, last, what in pending:
                if last < here:
                    checked += 1
                    assert ref() is None, f"{what} is alive when {target} runs"
            pending[:] = [p for p in pending if p[1] >= here]
            result = piece(*args, **kwargs)
            held = {id(a) for a in (*args, *kwargs.values(), *emitted.consts)}
            outputs = result if isinstance(result, (tuple, list)) else (result,)
            reads = last_reads[target]
            for i, value in enumerate(outputs):
                last = reads.get(i) if isinstance(reads, dict) else reads
                if (
                    isinstance(value, torch.Tensor)
                    and last is not None
                    and id(value) not in held
                    and sum(v is value for v in outputs) == 1
                ):
                    pending.append(
                        (weakref.ref(value), last, f"output {i} of {target}")
                    )
            return result

        return run

    callables = {
        target: recording(target, piece) for target, piece in gm.named_children()
    }
    fn = compile_execution_fn(
        emitted.code, callables, emitted.submod_names, emitted.consts
    )
    inputs = emitted.case.make_inputs(0)
    with torch.no_grad():
        fn(*inputs)
    if name in ("llama_3_layer", "two_layer_attention"):
        assert checked, "nothing was checked"


def test_dead_values_run_but_bind_nothing() -> None:
    code = emit_case("dead_values").code
    inlined = [
        ast.unparse(s) for s in body_of(functions(code)["__vllm_inlined_submods__1"])
    ]
    # The mutating op returns nothing: it is a bare call, not an assignment.
    assert "stitchtest_add_into(x, y, empty_like)" in inlined
    # Only the used element of the pair is read.
    assert "getitem_1 = pair[1]" in inlined
    assert not [line for line in inlined if "pair[0]" in line]


# -- provenance and comments ------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_no_timestamps_paths_or_object_ids(name: str) -> None:
    code = emit_case(name).code
    assert not re.search(r"\b(19|20)\d\d-\d\d-\d\d\b|\d\d:\d\d:\d\d", code)
    assert str(REPO_ROOT) not in code and "site-packages" not in code
    assert not re.search(r"0x[0-9a-f]{6,}", code)


def _piece_comments(code: str) -> list[str]:
    """The comment above each piece's statement in execution_fn ('' if none)."""
    lines = code.splitlines()
    comments = []
    for stmt in body_of(functions(code)["execution_fn"]):
        if isinstance(stmt, (ast.Delete, ast.Return)) or _binds_pieces(stmt):
            continue
        above = lines[stmt.lineno - 2].strip()
        comments.append(above[2:] if above.startswith("# ") else "")
    return comments


def test_module_path_comment_on_each_piece_call() -> None:
    emitted = emit_case("two_layer_attention")
    paths = [module_path_of(i.graph) for i in emitted.items]
    assert paths == [
        "embed_tokens .. layers.0.self_attn",
        "layers.0.self_attn",
        "layers.0.self_attn .. layers.1.self_attn",
        "layers.1.self_attn",
        "layers.1.self_attn .. norm",
    ]
    assert _piece_comments(emitted.code) == paths


def test_no_module_path_comment_without_metadata() -> None:
    emitted = emit_case("many_pieces")
    assert _piece_comments(emitted.code) == [""] * len(emitted.items)


# -- names --------------------------------------------------------------------------


def test_names_never_shadow_imports_builtins_or_reserved_globals() -> None:
    clashing = [
        "torch",
        "print",
        "__vllm_consts__",
        "__vllm_submods__",
        "execution_fn",
        "lambda",
        "match",
        "__vllm_inlined_submods__0",
        "aten_add_Tensor",
    ]

    def build(g: fx.Graph, p: list[fx.Node]) -> Any:
        total = g.call_function(torch.relu, (p[0],))
        for param in p[1:]:
            total = g.call_function(torch.ops.aten.add.Tensor, (total, param))
        return total

    split_gm = hand_split(build, inputs=len(clashing))
    for gm in (split_gm, split_gm.submod_0):
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        for node, name in zip(placeholders, clashing, strict=True):
            node.name = name
    code, _, fn = emit_and_load(split_gm)
    globals_ = {"torch", "__vllm_consts__", "__vllm_submods__", "execution_fn"}
    globals_ |= set(functions(code)) | set(module_assignments(code))
    assert {"__vllm_inlined_submods__0", "aten_add_Tensor"} <= globals_
    for fn_def in functions(code).values():
        params = [a.arg for a in fn_def.args.args]
        assert len(set(params)) == len(params)
        assert not set(params) & globals_, fn_def.name
    xs = randn(0, *[(3,)] * len(clashing))
    torch.testing.assert_close(fn(*xs), xs[0].relu() + sum(xs[1:]))


# -- errors --------------------------------------------------------------------------


def _assert_names(error: StitchCodegenError, name: str, op: str, target: str) -> None:
    message = str(error)
    assert f"node '{name}' (op={op}, target=" in message
    assert re.search(rf"target=[\w.:]*{re.escape(target)}\)", message), message


def test_call_module_inside_an_inlined_piece_is_an_error() -> None:
    piece = fx.Graph()
    x = piece.placeholder("x")
    piece.output(piece.call_module("proj", (x,)))
    root = torch.nn.Module()
    root.proj = torch.nn.Linear(2, 2)
    piece_gm = fx.GraphModule(root, piece)
    parent = torch.nn.Module()
    parent.add_module("submod_0", piece_gm)
    top = fx.Graph()
    tx = top.placeholder("x")
    top.output(top.call_module("submod_0", (tx,)))
    with pytest.raises(
        StitchCodegenError, match="call_module inside an inlined piece"
    ) as info:
        generate_execution_code(fx.GraphModule(parent, top))
    _assert_names(info.value, "proj", "call_module", "proj")


def test_non_int_index_of_a_piece_output_is_an_error() -> None:
    case = CASES["getitem_tuple_outputs"]()
    split_gm, _ = split_graph(case.gm, list(case.splitting_ops))
    (first,) = [n for n in split_gm.graph.nodes if n.name == "getitem"]
    first.args = (first.args[0], "zero")
    with pytest.raises(StitchCodegenError, match="'zero'.* not an int") as info:
        generate_execution_code(split_gm)
    _assert_names(info.value, "getitem", "call_function", "getitem")


def test_unsupported_node_kind_is_an_error() -> None:
    split_gm = hand_split(lambda g, p: g.call_function(torch.neg, (p[0],)))
    (call,) = [n for n in split_gm.graph.nodes if n.op == "call_module"]
    call.op = "call_something"
    with pytest.raises(StitchCodegenError, match="call_something") as info:
        generate_execution_code(split_gm)
    _assert_names(info.value, "submod_0", "call_something", "submod_0")


def test_use_before_definition_is_an_error() -> None:
    def build(g: fx.Graph, p: list[fx.Node]) -> Any:
        a = g.call_function(torch.neg, (p[0],))
        b = g.call_function(torch.relu, (a,))
        return b

    split_gm = hand_split(build)
    nodes = {n.name: n for n in split_gm.submod_0.graph.nodes}
    nodes["relu"].append(nodes["neg"])  # neg now comes after its user
    with pytest.raises(StitchCodegenError, match="not defined before its use") as info:
        generate_execution_code(split_gm)
    _assert_names(info.value, "neg", "call_function", "neg")


def test_missing_attribute_is_an_error() -> None:
    split_gm = hand_split(lambda g, p: g.call_function(torch.neg, (p[0],)))
    (call,) = [n for n in split_gm.graph.nodes if n.op == "call_module"]
    call.target = "submod_404"
    with pytest.raises(StitchCodegenError, match="'submod_404' does not exist") as info:
        generate_execution_code(split_gm)
    _assert_names(info.value, "submod_0", "call_module", "submod_404")


def test_keyword_that_is_not_an_identifier_is_an_error() -> None:
    def patch(gm: fx.GraphModule) -> None:
        (node,) = [n for n in gm.graph.nodes if n.op == "call_function"]
        node.kwargs = {"not valid": 1}

    split_gm = hand_split(
        lambda g, p: g.call_function(models.echo, (p[0],)), patch=patch
    )
    with pytest.raises(
        StitchCodegenError, match="keyword argument 'not valid'"
    ) as info:
        generate_execution_code(split_gm)
    _assert_names(info.value, "echo", "call_function", "echo")


def test_generate_needs_a_graph_module() -> None:
    with pytest.raises(StitchCodegenError, match="GraphModule"):
        generate_execution_code(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_method_keyword_that_is_not_an_identifier_is_an_error() -> None:
    def patch(gm: fx.GraphModule) -> None:
        (node,) = [n for n in gm.graph.nodes if n.op == "call_method"]
        node.kwargs = {"not valid": 1}

    split_gm = hand_split(lambda g, p: g.call_method("clamp", (p[0],)), patch=patch)
    with pytest.raises(
        StitchCodegenError, match="keyword argument 'not valid'"
    ) as info:
        generate_execution_code(split_gm)
    _assert_names(info.value, "clamp", "call_method", "clamp")


class _Recorder:
    def record(self, **kwargs: Any) -> dict[str, Any]:
        return kwargs


@pytest.mark.parametrize("op", ["call_function", "call_method"])
def test_keyword_named_like_a_python_keyword_is_lowered_or_named(op: str) -> None:
    def build(g: fx.Graph, p: list[fx.Node]) -> Any:
        if op == "call_function":
            return g.call_function(models.echo, (p[0],))
        return g.call_method("record", (p[0],))

    def patch(gm: fx.GraphModule) -> None:
        (node,) = [n for n in gm.graph.nodes if n.op == op]
        node.kwargs = {"class": 1}

    split_gm = hand_split(build, patch=patch)
    try:
        _, _, fn = emit_and_load(split_gm)
    except StitchCodegenError as error:  # lowering may refuse it, naming the node
        assert "'class'" in str(error)
        _assert_names(error, "echo" if op == "call_function" else "record", op, "")
    else:  # or pass it, e.g. as **{"class": 1}
        recorder = _Recorder()
        expected = (
            ((recorder,), {"class": 1}) if op == "call_function" else {"class": 1}
        )
        assert fn(recorder) == expected
