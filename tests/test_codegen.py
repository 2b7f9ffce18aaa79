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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import models
import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from models import CASES, emit_case, randn

from stitch.codegen import (
    StitchCodegenError,
    generate_execution_code,
    graph_hash,
    module_path_of,
    split_graph,
)
from stitch.codegen.split import IS_SPLITTING_META
from stitch.runtime import compile_execution_fn

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
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
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
    placeholders = [
        n.name for n in emitted.split_gm.graph.nodes if n.op == "placeholder"
    ]
    assert [a.arg for a in fn.args.args] == placeholders
    assert [a.arg for a in fn.args.kwonlyargs] == ["__vllm_submods__"]
    assert fn.args.defaults == [] and fn.args.kw_defaults == [None]
    assert fn.args.vararg is None and fn.args.kwarg is None


def test_signature_keeps_unused_placeholders() -> None:
    fn = functions(emit_case("dead_values").code)["execution_fn"]
    assert [a.arg for a in fn.args.args] == ["x", "unused", "y"]


def _piece_calls(code: str) -> list[tuple[str, ast.Call]]:
    """``(assigned name or '', call)`` for every call statement in execution_fn."""
    calls = []
    for stmt in body_of(functions(code)["execution_fn"]):
        value = stmt.value if isinstance(stmt, (ast.Assign, ast.Expr)) else None
        if isinstance(value, ast.Call):
            target = stmt.targets[0].id if isinstance(stmt, ast.Assign) else ""
            calls.append((target, value))
    return calls


@pytest.mark.parametrize("name", list(CASES))
def test_pieces_are_called_by_index_or_inlined(name: str) -> None:
    emitted = emit_case(name)
    compiled = [i.submod_name for i in emitted.items if not i.is_splitting_graph]
    splitting = [i for i in emitted.items if i.is_splitting_graph]
    assert emitted.submod_names == compiled
    defined = functions(emitted.code)
    assert set(defined) == {"execution_fn"} | {
        f"__vllm_inlined_submods__{i.graph_id}" for i in splitting
    }

    called: list[str] = []
    for target, call in _piece_calls(emitted.code):
        func = call.func
        if isinstance(func, ast.Subscript):
            assert (
                isinstance(func.value, ast.Name) and func.value.id == "__vllm_submods__"
            )
            index = func.slice.value  # type: ignore[attr-defined]
            # The piece behind __vllm_submods__[i] is submod_names[i]; its result
            # keeps the piece's name.
            assert target == emitted.submod_names[index]
            called.append(emitted.submod_names[index])
        else:
            assert isinstance(func, ast.Name)
            m = re.fullmatch(r"__vllm_inlined_submods__(\d+)", func.id)
            assert m is not None, func.id
            called.append(f"submod_{m.group(1)}")
    assert called == [i.submod_name for i in emitted.items]


def test_getitem_becomes_indexing() -> None:
    code = emit_case("getitem_tuple_outputs").code
    assert "getitem" not in "".join(re.findall(r"operator\.\w+", code))
    assert "import operator" not in code
    assert "getitem = submod_0[0]" in code and "getitem_1 = submod_0[1]" in code
    inlined = ast.unparse(functions(code)["__vllm_inlined_submods__0"])
    assert "pair[0]" in inlined and "pair[1]" in inlined


def test_slicing_getitem_is_exact_in_an_inlined_piece() -> None:
    code = emit_case("inlined_constants").code
    assert "getitem_1 = getitem[(..., slice(None, None, 2))]" in code
    assert "getitem_3 = getitem_2[(slice(1, None, None), None)]" in code


# -- call targets ----------------------------------------------------------------------


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
    for expr in (
        "torch.relu(",
        "torch.nn.functional.softmax(relu, dim=-1)",
        "operator.mul(",
        "torch.ops.aten.add.Tensor(",
        "torch.Tensor.add(",
        "torch.ops.aten.sub(",
        "max(2, 3)",
    ):
        assert expr in code, expr
    (x,) = randn(0, (3, 4))
    out, n = fn(x)
    assert n == 3
    torch.testing.assert_close(out, (F.softmax(x.relu(), dim=-1) * 2 + 3 * x) + 1 - 0.5)


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
    body = [
        ast.unparse(s) for s in body_of(functions(code)["__vllm_inlined_submods__0"])
    ]
    assert [line for line in body if "__vllm_consts__" in line] == [
        "local = __vllm_consts__[0](a0)",
        "neg = __vllm_consts__[1](local)",
        "_lambda_ = __vllm_consts__[2](neg)",
        "local_1 = __vllm_consts__[0](_lambda_)",
    ]
    (x,) = randn(0, (4,))
    torch.testing.assert_close(fn(x), (x * 3 * 5 - 1) * 3)


def test_a_module_level_function_is_imported_by_name() -> None:
    def build(g: fx.Graph, p: list[fx.Node]) -> Any:
        return g.call_function(models.echo, (p[0], 1), {"k": "v"})

    code, consts, fn = emit_and_load(hand_split(build))
    assert consts == [] and "import models" in code
    assert 'models.echo(a0, 1, k="v")' in code
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
    assert 'models.echo([a0, 1.5], d={"k": [a0]})' in code
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
    expected = [
        torch.float16,
        cpu_a,
        torch.channels_last,
        torch.strided,
        opaque,
        tensor,
        torch.Generator,
        torch.sparse_coo,
    ]
    assert len(consts) == len(expected)
    assert all(
        c is e or (type(c) is type(e) and c == e) for c, e in zip(consts, expected)
    )
    assert consts[4] is opaque and consts[5] is tensor
    body = ast.unparse(functions(code)["__vllm_inlined_submods__0"])
    assert "[__vllm_consts__[2], {'layout': __vllm_consts__[3]}]" in body
    assert "obj=(__vllm_consts__[4], __vllm_consts__[7])" in body
    assert "0x" not in code and "object at" not in code
    out_args, out_kwargs = fn("p")
    assert out_args[1:] == args[:4] + (tensor,) + args[5:]
    assert out_args[4] is opaque and out_args[5] is tensor
    assert out_kwargs == kwargs


def test_case_constants_are_device_dtype_layout_and_memory_format() -> None:
    emitted = emit_case("device_dtype_consts")
    assert emitted.consts == [
        torch.float64,
        torch.device("cpu"),
        torch.strided,
        torch.contiguous_format,
        torch.preserve_format,
        torch.float32,
    ]
    assert "__vllm_consts__[6]" not in emitted.code


def test_tensor_constants_are_passed_through_consts() -> None:
    emitted = emit_case("inlined_constants")
    (table,) = emitted.consts
    assert table is emitted.split_gm.table
    assert "__vllm_inlined_submods__1(submod_0, __vllm_consts__[0])" in emitted.code


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


# -- del right after the last use ----------------------------------------------------


def _check_dels(fn: ast.FunctionDef) -> None:
    body = body_of(fn)
    params = [a.arg for a in fn.args.args]
    assigned = [
        t.id
        for stmt in body
        if isinstance(stmt, ast.Assign)
        for t in stmt.targets
        if isinstance(t, ast.Name)
    ]
    assert len(set(assigned)) == len(assigned), "a name is bound twice"
    returned = loaded_names(body[-1]) if isinstance(body[-1], ast.Return) else set()
    for name in params + assigned:
        uses = [
            i
            for i, stmt in enumerate(body)
            if not isinstance(stmt, ast.Delete) and name in loaded_names(stmt)
        ]
        dels = [
            i
            for i, stmt in enumerate(body)
            if isinstance(stmt, ast.Delete) and name in loaded_or_deleted(stmt)
        ]
        where = f"{name!r} in {fn.name}"
        if name in returned:
            assert dels == [], f"{where} is returned but deleted"
        elif not uses:
            assert name in params, f"{where} is bound but never used"
            assert dels == [0], f"unused parameter {where} is not deleted first"
        else:
            assert dels == [max(uses) + 1], f"{where}: last use {max(uses)}, del {dels}"


@pytest.mark.parametrize("name", list(CASES))
def test_every_value_is_deleted_right_after_its_last_use(name: str) -> None:
    for fn in functions(emit_case(name).code).values():
        _check_dels(fn)


def test_dead_values_run_but_bind_nothing() -> None:
    code = emit_case("dead_values").code
    fn = functions(code)["execution_fn"]
    assert isinstance(body_of(fn)[0], ast.Delete)
    assert ast.unparse(body_of(fn)[0]) == "del unused"
    inlined = [
        ast.unparse(s) for s in body_of(functions(code)["__vllm_inlined_submods__1"])
    ]
    # The mutating op returns nothing: it is a bare call, not an assignment.
    assert "torch.ops.stitchtest.add_into(x, y, empty_like)" in inlined
    # Only the used element of the pair is read.
    assert "getitem_1 = pair[1]" in inlined
    assert not [line for line in inlined if "pair[0]" in line]


# -- provenance and comments ------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_provenance_header(name: str) -> None:
    emitted = emit_case(name)
    header = []
    for line in emitted.code.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    n_inlined = sum(i.is_splitting_graph for i in emitted.items)
    n_called = len(emitted.items) - n_inlined
    assert header == [
        "# Stitching source emitted by stitch.codegen (format 1).",
        f"# pieces: {len(emitted.items)} ({n_called} called through __vllm_submods__, "
        f"{n_inlined} inlined); constants: {len(emitted.consts)}",
        f"# graph: sha256:{graph_hash(emitted.split_gm)[:16]}",
    ]


@pytest.mark.parametrize("name", list(CASES))
def test_no_timestamps_paths_or_object_ids(name: str) -> None:
    code = emit_case(name).code
    assert not re.search(r"\b(19|20)\d\d-\d\d-\d\d\b|\d\d:\d\d:\d\d", code)
    assert str(REPO_ROOT) not in code and "site-packages" not in code
    assert not re.search(r"0x[0-9a-f]{6,}", code)


def _comments_above_calls(code: str) -> list[str]:
    lines = code.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.startswith("def execution_fn(")
    )
    comments = []
    previous = ""
    for line in lines[start + 1 :]:
        stripped = line.strip()
        if (
            "__vllm_submods__[" in stripped or "__vllm_inlined_submods__" in stripped
        ) and ("=" in stripped or stripped.startswith("__vllm_inlined")):
            comments.append(previous[2:] if previous.startswith("# ") else "")
        previous = stripped
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
    assert _comments_above_calls(emitted.code) == paths
    fns = functions(emitted.code)
    assert ast.get_docstring(fns["__vllm_inlined_submods__1"]) == (
        "Inlined piece submod_1 (layers.0.self_attn)."
    )


def test_no_module_path_comment_without_metadata() -> None:
    emitted = emit_case("many_pieces")
    assert _comments_above_calls(emitted.code) == [""] * len(emitted.items)
    assert ast.get_docstring(functions(emitted.code)["__vllm_inlined_submods__1"]) == (
        "Inlined piece submod_1."
    )


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
    ]

    def build(g: fx.Graph, p: list[fx.Node]) -> Any:
        total = g.call_function(torch.relu, (p[0],))
        for param in p[1:]:
            total = g.call_function(torch.add, (total, param))
        return total

    split_gm = hand_split(build, inputs=len(clashing))
    for node, name in zip(
        [n for n in split_gm.graph.nodes if n.op == "placeholder"],
        clashing,
        strict=True,
    ):
        node.name = name
    for node, name in zip(
        [n for n in split_gm.submod_0.graph.nodes if n.op == "placeholder"],
        clashing,
        strict=True,
    ):
        node.name = name
    code, _, fn = emit_and_load(split_gm)
    params = [a.arg for a in functions(code)["execution_fn"].args.args]
    assert len(set(params)) == len(params)
    assert not set(params) & set(clashing[:-1] + ["__vllm_inlined_submods__0"])
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
