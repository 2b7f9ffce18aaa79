"""split_graph: where the graph is cut, and what crosses the cuts."""

from __future__ import annotations

import operator
from typing import Any

import pytest
import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import ShapeProp

from stitch.codegen import SplitItem, split_graph
from stitch.core.errors import StitchCodegenError
from stitch.runtime.examples import EXAMPLES, Example, register_example

import models
from models import ops, randn

SIZE_OPS = (torch.ops.aten.sym_size.int,)


def call_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op in ("call_function", "call_method")]


def layout(items: list[SplitItem]) -> list[tuple[bool, list[str]]]:
    """``[(is_splitting, [node names])]`` per piece, in piece order."""
    return [
        (i.is_splitting_graph, [n.name for n in call_nodes(i.graph)]) for i in items
    ]


def targets(gm: fx.GraphModule) -> list[Any]:
    return [n.target for n in call_nodes(gm)]


def splitting_targets(items: list[SplitItem]) -> list[str]:
    return [
        n.name
        for item in items
        if item.is_splitting_graph
        for n in call_nodes(item.graph)
        if n.target is not operator.getitem
    ]


# -- which ops split ----------------------------------------------------------------


def f_overloads(x: torch.Tensor) -> torch.Tensor:
    a = torch.ops.stitchtest.twice.default(x)
    b = a.sin()
    c = torch.ops.stitchtest.twice.scaled(b, 3.0)
    return c.cos()


@pytest.mark.parametrize(
    ("splitting_ops", "expected"),
    [
        (["stitchtest::twice"], ["twice_default", "twice_scaled"]),
        ([torch.ops.stitchtest.twice], ["twice_default", "twice_scaled"]),
        (["stitchtest::twice.scaled"], ["twice_scaled"]),
        ([torch.ops.stitchtest.twice.scaled], ["twice_scaled"]),
        (["stitchtest::twice.default"], ["twice_default"]),
        (("stitchtest::twice.default", torch.ops.stitchtest.twice.scaled), None),
    ],
    ids=["name", "packet", "overload-name", "overload", "default-name", "mixed-tuple"],
)
def test_splitting_op_spellings(splitting_ops: Any, expected: list[str] | None) -> None:
    gm = fx.symbolic_trace(f_overloads)
    names = {n.target: n.name for n in call_nodes(gm)}
    expected_names = (
        [
            names[torch.ops.stitchtest.twice.default],
            names[torch.ops.stitchtest.twice.scaled],
        ]
        if expected is None
        else [
            names[
                (
                    torch.ops.stitchtest.twice.default
                    if e == "twice_default"
                    else torch.ops.stitchtest.twice.scaled
                )
            ]
            for e in expected
        ]
    )
    _, items = split_graph(gm, splitting_ops)
    assert splitting_targets(items) == expected_names


def test_packet_target_matches_any_entry_for_its_op() -> None:
    # symbolic_trace of ops.scale(...) records the OpOverloadPacket, whose overload
    # is resolved only at run time: an overload entry for the op must catch it.
    gm = fx.symbolic_trace(models.f_splitting_first_and_last)
    assert all(
        isinstance(n.target, torch._ops.OpOverloadPacket)
        for n in call_nodes(gm)
        if "scale" in n.name
    )
    _, items = split_graph(gm, ["stitchtest::scale.default"])
    assert [i.is_splitting_graph for i in items] == [True, False, True]


@pytest.mark.parametrize(
    "splitting_ops", [None, [], ["nosuch::op"], ["stitchtest::nosuch"]]
)
def test_no_splitting_op_gives_exactly_one_piece(splitting_ops: Any) -> None:
    gm = fx.symbolic_trace(models.f_splitting_first_and_last)
    before = [n.name for n in call_nodes(gm)]
    split_gm, items = split_graph(gm, splitting_ops)
    assert [(i.submod_name, i.is_splitting_graph) for i in items] == [
        ("submod_0", False)
    ]
    assert [n.name for n in call_nodes(items[0].graph)] == before
    x, y = randn(0, (3, 3), (3, 3))
    torch.testing.assert_close(split_gm(x, y), models.f_splitting_first_and_last(x, y))


@pytest.mark.parametrize(
    "bad",
    [
        "attention",
        "stitch:attention",
        "stitch::",
        "::attention",
        "stitch::attention.",
        "stitch::attention.default.x",
        "stitch::atten tion",
        "1stitch::attention",
        "",
    ],
)
def test_malformed_op_name_is_a_value_error_naming_it(bad: str) -> None:
    gm = fx.symbolic_trace(models.f_splitting_first_and_last)
    with pytest.raises(ValueError, match="ns::op") as info:
        split_graph(gm, ["stitchtest::scale", bad])
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [42, object(), None])
def test_splitting_op_of_another_type_is_a_value_error(bad: Any) -> None:
    gm = fx.symbolic_trace(models.f_splitting_first_and_last)
    with pytest.raises(ValueError, match=type(bad).__name__):
        split_graph(gm, [bad])


def test_split_graph_needs_a_graph_module() -> None:
    with pytest.raises(StitchCodegenError, match="GraphModule"):
        split_graph(models.f_splitting_first_and_last, ["stitchtest::scale"])  # type: ignore[arg-type]


# -- shape of the pieces -------------------------------------------------------------


def f_alternating(x: torch.Tensor) -> torch.Tensor:
    a = x.sin()
    b = ops.scale(a, 2.0)
    c = b.cos() + a
    d = ops.scale(c, 3.0)
    return d.tanh()


def test_each_splitting_op_lands_in_its_own_piece() -> None:
    _, items = split_graph(fx.symbolic_trace(f_alternating), ["stitchtest::scale"])
    assert [(i.is_splitting_graph, targets(i.graph)) for i in items] == [
        (False, ["sin"]),
        (True, [ops.scale]),
        (False, ["cos", operator.add]),
        (True, [ops.scale]),
        (False, ["tanh"]),
    ]


def test_consecutive_splitting_ops_share_one_piece() -> None:
    gm = fx.symbolic_trace(models.f_consecutive_splitting_ops)
    _, items = split_graph(gm, ["stitchtest::scale"])
    assert layout(items) == [
        (False, ["sub"]),
        (True, ["scale", "scale_1"]),
        (False, ["empty_like", "add_into", "mul"]),
    ]


def f_alloc_between(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    a = ops.scale(x, 2.0)
    out = torch.empty_like(a)
    ops.add_into(a, y, out)
    return out.relu()


def test_allocation_only_piece_is_merged_into_a_neighbour() -> None:
    split_gm, items = split_graph(
        fx.symbolic_trace(f_alloc_between),
        ["stitchtest::scale", "stitchtest::add_into"],
    )
    pieces = layout(items)
    assert ["empty_like"] not in [names for _, names in pieces]
    assert [n for _, names in pieces for n in names] == [
        "scale",
        "empty_like",
        "add_into",
        "relu",
    ]
    x, y = randn(0, (2, 3), (2, 3))
    torch.testing.assert_close(split_gm(x, y), f_alloc_between(x, y))


def test_allocation_between_splitting_ops_leaves_one_splitting_piece() -> None:
    _, items = split_graph(
        fx.symbolic_trace(f_alloc_between),
        ["stitchtest::scale", "stitchtest::add_into"],
    )
    assert layout(items) == [
        (True, ["scale", "empty_like", "add_into"]),
        (False, ["relu"]),
    ]


def f_alloc_first_and_last(x: torch.Tensor, y: torch.Tensor) -> Any:
    out = torch.empty_like(x)
    ops.add_into(x, y, out)
    spare = torch.empty_like(out)
    return out, spare.shape[0]


def test_leading_and_trailing_allocations_join_the_splitting_piece() -> None:
    gm = fx.symbolic_trace(f_alloc_first_and_last)
    _, items = split_graph(gm, ["stitchtest::add_into"])
    assert [i.is_splitting_graph for i in items] == [True]
    assert [n.name for n in call_nodes(items[0].graph)][:2] == [
        "empty_like",
        "add_into",
    ]


def f_late_getitem(x: torch.Tensor) -> torch.Tensor:
    m = torch.max(x, dim=-1, keepdim=True)
    s = ops.scale(x, 2.0)
    values = m[0]  # after the splitting op in graph order
    return values + s


def test_getitem_stays_in_the_piece_of_its_producer() -> None:
    gm = fx.symbolic_trace(f_late_getitem)
    assert [n.name for n in call_nodes(gm)] == ["max_1", "scale", "getitem", "add"]
    split_gm, items = split_graph(gm, ["stitchtest::scale"])
    assert layout(items) == [
        (False, ["max_1", "getitem"]),
        (True, ["scale"]),
        (False, ["add"]),
    ]
    (x,) = randn(0, (3, 4))
    torch.testing.assert_close(split_gm(x), f_late_getitem(x))


def _multi_output_nodes(gm: fx.GraphModule) -> set[str]:
    return {
        n.name
        for n in gm.graph.nodes
        if any(
            u.op == "call_function" and u.target is operator.getitem for u in n.users
        )
    }


@pytest.mark.parametrize(
    "name", ["getitem_tuple_outputs", "inlined_constants", "dead_values"]
)
def test_no_tuple_crosses_a_piece_boundary(name: str) -> None:
    case = models.CASES[name]()
    _, items = split_graph(case.gm, list(case.splitting_ops))
    # Split at least once, else no boundary is checked.
    assert len(items) >= 2, (name, [it.submod_name for it in items])
    for item in items:
        (output,) = [n for n in item.graph.graph.nodes if n.op == "output"]
        returned = output.args[0]
        returned = returned if isinstance(returned, (tuple, list)) else (returned,)
        tuples = _multi_output_nodes(item.graph)
        assert not [
            r.name for r in returned if isinstance(r, fx.Node) and r.name in tuples
        ]


def f_getitem_of_placeholder(x: torch.Tensor, t: Any) -> torch.Tensor:
    s = ops.scale(x, 2.0)
    return s + t[0]


def test_getitem_of_a_placeholder_is_an_ordinary_node() -> None:
    _, items = split_graph(
        fx.symbolic_trace(f_getitem_of_placeholder), ["stitchtest::scale"]
    )
    assert layout(items) == [(True, ["scale"]), (False, ["getitem", "add"])]


def test_original_node_order_is_kept() -> None:
    _, _, gm = EXAMPLES["two_layer"].trace()
    before = [(n.target, n.args[1:]) for n in call_nodes(gm)]
    _, items = split_graph(gm, ["stitch::attention"])
    after = [(n.target, n.args[1:]) for i in items for n in call_nodes(i.graph)]
    # Node names are local to each piece; targets and constant arguments are not.
    assert [(t, _constants(a)) for t, a in after] == [
        (t, _constants(a)) for t, a in before
    ]
    assert len(after) > 100


def _constants(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a for a in args if not isinstance(a, fx.Node))


def test_items_are_sorted_by_integer_graph_id() -> None:
    case = models.case_many_pieces()
    split_gm, items = split_graph(case.gm, list(case.splitting_ops))
    assert len(items) == 12
    assert [i.graph_id for i in items] == list(range(12))
    assert [i.submod_name for i in items] == [f"submod_{i}" for i in range(12)]
    assert [i.is_splitting_graph for i in items] == [False, True] * 6
    assert all(i.graph is getattr(split_gm, i.submod_name) for i in items)
    called = [n.target for n in split_gm.graph.nodes if n.op == "call_module"]
    assert called == [i.submod_name for i in items]


# -- sizes ---------------------------------------------------------------------------


def _size_reads(gm: fx.GraphModule) -> list[fx.Node]:
    return [
        n
        for n in gm.graph.nodes
        if (n.op == "call_method" and n.target == "size")
        or (n.op == "call_function" and n.target is getattr)
    ]


def f_shape_attribute(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    a = ops.scale(x.flatten(), 2.0)
    return a.view(shape) + y * shape[-1]


@pytest.mark.parametrize("fn", [models.f_size_across_pieces, f_shape_attribute])
def test_sizes_are_read_per_dimension_where_they_are_used(fn: Any) -> None:
    gm = fx.symbolic_trace(fn)
    x, y = randn(0, (3, 4), (3, 4))
    ShapeProp(gm).propagate(x, y)
    assert _size_reads(gm)
    split_gm, items = split_graph(gm, ["stitchtest::scale"])
    sym_sizes = []
    for item in items:
        assert not _size_reads(item.graph)
        sym_sizes += [n for n in item.graph.graph.nodes if n.target in SIZE_OPS]
    assert sym_sizes and all(n.args[1] >= 0 for n in sym_sizes)

    seen: list[Any] = []
    for item in items:
        item.graph.register_forward_pre_hook(lambda _m, args: seen.extend(args))
    torch.testing.assert_close(split_gm(x, y), fn(x, y))
    assert seen and all(isinstance(v, torch.Tensor) for v in seen)


def test_a_size_without_shape_metadata_that_would_cross_is_an_error() -> None:
    gm = fx.symbolic_trace(models.f_size_across_pieces)
    with pytest.raises(StitchCodegenError, match="ShapeProp") as info:
        split_graph(gm, ["stitchtest::scale"])
    assert "'size'" in str(info.value) and "op=call_method" in str(info.value)


def test_symbolic_trace_keeps_sym_sizes_and_no_size_tuples() -> None:
    case = models.case_llama_dynamic_batch()
    _, items = split_graph(case.gm, list(case.splitting_ops))
    sym = [n for i in items for n in i.graph.graph.nodes if n.target in SIZE_OPS]
    assert sym
    for item in items:
        assert not _size_reads(item.graph)
        for n in item.graph.graph.nodes:
            val = n.meta.get("val")
            assert not isinstance(val, torch.Size)


def f_size_method(x: torch.Tensor) -> torch.Tensor:
    s = ops.scale(x, 2.0)
    return s.reshape(x.size().numel())


def f_size_returned(x: torch.Tensor) -> Any:
    return ops.scale(x, 2.0), x.size()


def test_size_methods_still_work_after_decomposition() -> None:
    gm = fx.symbolic_trace(f_size_method)
    (x,) = randn(0, (3, 4))
    ShapeProp(gm).propagate(x)
    split_gm, _ = split_graph(gm, ["stitchtest::scale"])
    torch.testing.assert_close(split_gm(x), f_size_method(x))


def test_a_returned_size_keeps_its_type() -> None:
    gm = fx.symbolic_trace(f_size_returned)
    (x,) = randn(0, (3, 4))
    ShapeProp(gm).propagate(x)
    split_gm, _ = split_graph(gm, ["stitchtest::scale"])
    _, size = split_gm(x)
    assert type(size) is torch.Size and size == x.size()


def test_hashes_of_a_slice_bounded_by_a_node_are_stable() -> None:
    # ``x[:, 0:n]`` keeps the node ``n`` inside a slice argument.  Its
    # description must not fall back to an object's repr (an address): two
    # traces of one function, as in two processes, hash alike, or no piece
    # holding such a slice (a BERT embedding's position ids) ever starts warm.
    from stitch.codegen.fingerprint import graph_hash, structural_hash

    def f(x: torch.Tensor, n: int) -> torch.Tensor:
        return x[:, 0:n] * 2

    first, second = torch.fx.symbolic_trace(f), torch.fx.symbolic_trace(f)
    (index,) = [n for n in first.graph.nodes if n.op == "call_function"][:1]
    assert any(isinstance(a, slice) for a in index.args[1])
    assert structural_hash(first) == structural_hash(second)
    assert graph_hash(first) == graph_hash(second)


def test_structures_described_once_hash_as_described_each_time() -> None:
    """NOTE: [a graph's structure is described once per compile]: inside the
    scope every hash, with strings abstracted or not and with example inputs,
    is the hash made without it; outside it a changed graph hashes anew."""
    from stitch.codegen.fingerprint import (
        string_constants,
        structural_hash,
        structures_described_once,
    )

    def tagged(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.add(x, 1).relu() * torch.ops.aten.scalar_tensor(2.0)

    def named(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.stitch.layer_tag(x * 2, "model.layers.3")

    import stitch.runtime.examples.ops  # noqa: F401 - registers stitch::layer_tag

    graphs = [torch.fx.symbolic_trace(tagged), torch.fx.symbolic_trace(named)]
    example = (torch.empty(2, 3),)
    calls = [(g, ex, a) for g in graphs for ex in ((), example) for a in (False, True)]
    plain = [structural_hash(g, ex, abstract_strings=a) for g, ex, a in calls]
    with structures_described_once():
        once = [structural_hash(g, ex, abstract_strings=a) for g, ex, a in calls]
        again = [structural_hash(g, ex, abstract_strings=a) for g, ex, a in calls]
        assert string_constants(graphs[1]) == ["model.layers.3"]
    assert once == again == plain
    assert plain[2] != plain[0]  # example inputs count
    assert plain[4] != plain[5]  # strings abstracted or not
    assert plain[0] == plain[1]  # no strings: one text

    first = graphs[0]
    before = structural_hash(first)
    (mul,) = [n for n in first.graph.nodes if n.target is operator.mul]
    mul.target = operator.add
    first.recompile()
    assert structural_hash(first) != before


def test_repeated_pieces_fake_outputs_are_what_running_them_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NOTE: [a repeated piece's fake outputs are made, not run] (runtime/pipeline/
    fake_propagation.py): every piece's planned inputs, made for repeated pieces,
    have the sizes, strides, offsets, view-ness and shared buffers a full fake run
    gives."""
    from stitch.codegen.fingerprint import describe_example
    from stitch.runtime import CompilationConfig, StitchBackend
    from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs
    from stitch.runtime.pipeline import fake_propagation

    real = fake_propagation.piece_inputs
    compared: list[int] = []

    def shape_of(args: dict[str, tuple[Any, ...]]) -> dict[str, list[str]]:
        out = {}
        for name, values in args.items():
            storages = {}
            described = []
            for v in values:
                text = describe_example(v)
                if isinstance(v, torch.Tensor):
                    key = v.untyped_storage()._cdata
                    storages.setdefault(key, len(storages))
                    text += f"@{v.storage_offset()} view={v._is_view()} "
                    text += f"buffer={storages[key]}"
                described.append(text)
            out[name] = described
        return out

    def both(split_gm: Any, fake_inputs: Any) -> Any:
        made = real(split_gm, fake_inputs)
        with monkeypatch.context() as m:
            m.setattr(
                fake_propagation._RepeatedPieces, "made", lambda self, key, args: None
            )
            run = real(split_gm, fake_inputs)
        assert shape_of(made) == shape_of(run)
        compared.append(len(made))
        return made

    monkeypatch.setattr(fake_propagation, "piece_inputs", both)
    torch._dynamo.reset()
    layers = 3
    cfg = LlamaConfig(num_layers=layers)
    model = build_llama(cfg)
    backend = StitchBackend(CompilationConfig(backend="eager", disable_cache=True))
    compiled = torch.compile(model, backend=backend, dynamic=True)
    with torch.no_grad():
        compiled(*llama_inputs(cfg, 8))
    torch._dynamo.reset()
    assert compared and compared[0] == 2 * layers + 1  # pieces and attentions


def test_an_example_registers_once_under_its_name() -> None:
    """``register_example`` adds an example to EXAMPLES (``stitch emit --list``
    shows it) and refuses a name that is taken."""
    built_in = EXAMPLES["two_layer"]
    mine = Example("stitch_test_mine", "a test's own example", built_in.build)
    try:
        assert register_example(mine) is mine
        assert EXAMPLES["stitch_test_mine"] is mine
        with pytest.raises(ValueError, match="'two_layer' is already registered"):
            register_example(Example("two_layer", "another", built_in.build))
        assert EXAMPLES["two_layer"] is built_in
    finally:
        EXAMPLES.pop("stitch_test_mine", None)
