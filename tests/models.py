"""Test-only custom ops (namespace ``stitchtest::``) and the golden reference cases.

Every case is built deterministically (``torch.fx.symbolic_trace`` of module-level
functions and modules, or ``make_fx`` of the built-in examples), so node names and
therefore the emitted source are the same in every run and every process.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from stitch.codegen import SplitItem, generate_execution_code, split_graph
from stitch.runtime.examples import EXAMPLES, llama_inputs

NS = "stitchtest"

# --------------------------------------------------------------------------------
# Custom ops.  They are splitting ops in the cases below: the kind of op a serving
# stack runs eagerly between compiled pieces.
# --------------------------------------------------------------------------------


@torch.library.custom_op(f"{NS}::add_into", mutates_args=("out",))
def add_into(x: Tensor, y: Tensor, out: Tensor) -> None:
    """Writes ``x + y`` into ``out`` (mutates an out argument, returns nothing)."""
    out.copy_(x + y)


@add_into.register_fake
def _add_into_fake(x: Tensor, y: Tensor, out: Tensor) -> None:
    return None


@torch.library.custom_op(f"{NS}::scale", mutates_args=())
def scale(
    x: Tensor, alpha: float, *, dtype: torch.dtype | None = None, tag: str = ""
) -> Tensor:
    """``x * alpha`` (optionally cast); ``tag`` only shifts the result by its length."""
    y = x * alpha + len(tag)
    return y.to(dtype) if dtype is not None else y


@scale.register_fake
def _scale_fake(x, alpha, *, dtype=None, tag=""):
    return torch.empty_like(x, dtype=dtype)


@torch.library.custom_op(f"{NS}::pair", mutates_args=())
def pair(x: Tensor) -> tuple[Tensor, Tensor]:
    """A tuple-returning op: ``(x + 1, x * 2)``."""
    return x + 1, x * 2


@pair.register_fake
def _pair_fake(x):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op(f"{NS}::weighted_sum", mutates_args=())
def weighted_sum(xs: list[Tensor], weights: list[float]) -> Tensor:
    """``sum(w * x)`` in float32, called with keyword arguments in the cases."""
    total = torch.zeros_like(xs[0], dtype=torch.float32)
    for x, w in zip(xs, weights, strict=True):
        total = total + w * x.float()
    return total


@weighted_sum.register_fake
def _weighted_sum_fake(xs, weights):
    return torch.empty_like(xs[0], dtype=torch.float32)


@torch.library.custom_op(f"{NS}::encode", mutates_args=())
def encode(x: Tensor, values: list[float], flag: bool, mode: str) -> Tensor:
    """Adds a number that depends on every literal exactly (nan, +-inf, -0.0 too).

    A literal rendered wrongly in emitted source (``-0.0`` as ``0.0``, ``inf`` as
    ``nan``, a string with its quotes mangled) changes the result.
    """
    code = 0.0
    for i, v in enumerate(values, 1):
        if math.isnan(v):
            c = 1000.0
        elif math.isinf(v):
            c = 2000.0 if v > 0 else 3000.0
        elif v == 0.0:
            c = 4000.0 if math.copysign(1.0, v) < 0 else 5000.0
        elif abs(v) < 1e-200:
            c = 6000.0 + math.log10(abs(v))
        else:
            c = v
        code += i * c
    code += 10.0 * sum(ord(ch) for ch in mode)
    return x + (code if flag else -code)


@encode.register_fake
def _encode_fake(x, values, flag, mode):
    return torch.empty_like(x)


# Ops whose schema needs types ``custom_op`` cannot infer (Layout, MemoryFormat),
# or several overloads of one op.
_lib = torch.library.Library(NS, "FRAGMENT")
_lib.define(
    "convert(Tensor x, *, ScalarType dtype, Device device, Layout layout, "
    "MemoryFormat memory_format) -> Tensor"
)
_lib.define("twice(Tensor x) -> Tensor")
_lib.define("twice.scaled(Tensor x, float s) -> Tensor")


def _convert(x, *, dtype, device, layout, memory_format):
    if layout != torch.strided:
        raise ValueError(f"stitchtest::convert supports strided tensors, got {layout}")
    return x.to(dtype=dtype, device=device, memory_format=memory_format, copy=True)


def _twice(x):
    return x * 2


def _twice_scaled(x, s):
    return x * 2 * s


for _key in ("CompositeExplicitAutograd",):
    _lib.impl("convert", _convert, _key)
    _lib.impl("twice", _twice, _key)
    _lib.impl("twice.scaled", _twice_scaled, _key)

# --------------------------------------------------------------------------------
# Reference cases.
# --------------------------------------------------------------------------------

ops = torch.ops.stitchtest


@dataclasses.dataclass
class Case:
    """A graph to split and emit, and how to check it numerically.

    ``make_inputs(seed)`` returns fresh inputs; ``reference`` is the unsplit
    model/function; ``reset`` (if any) restores state the model mutates (KV caches)
    and runs before every call.
    """

    gm: fx.GraphModule
    splitting_ops: tuple[Any, ...]
    make_inputs: Callable[[int], tuple[Any, ...]]
    reference: Callable[..., Any]
    reset: Callable[[], None] | None = None
    seeds: tuple[int, ...] = (0, 1)


def randn(seed: int, *shapes: tuple[int, ...]) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=gen) for shape in shapes)


def _traced(fn: Callable[..., Any] | nn.Module) -> fx.GraphModule:
    return fx.symbolic_trace(fn)


def _example_case(name: str, seeds: tuple[int, ...], num_tokens: Any) -> Case:
    example = EXAMPLES[name]
    model, _, gm = example.trace()

    def make_inputs(seed: int) -> tuple[Any, ...]:
        n = num_tokens(seed) if callable(num_tokens) else num_tokens
        return llama_inputs(model.cfg, n, seed=seed)

    return Case(
        gm,
        example.splitting_ops,
        make_inputs,
        model,
        reset=model.reset_kv_caches,
        seeds=seeds,
    )


def case_two_layer_attention() -> Case:
    """2-layer decoder split at ``stitch::attention`` (mutates ``out`` and caches)."""
    return _example_case("two_layer", (0, 1), 8)


def case_llama_3_layer() -> Case:
    return _example_case("llama", (0, 1), 8)


def case_llama_dynamic_batch() -> Case:
    """Symbolic batch dimension: one graph serves every number of tokens."""
    return _example_case("llama_dynamic", (0, 1, 2), lambda seed: (3, 8, 17)[seed])


def f_getitem_tuple_outputs(x: Tensor, y: Tensor) -> Any:
    p = ops.pair(x)
    first, second = p[0], p[1]
    values, indices = torch.max(first * y, dim=-1, keepdim=True)
    scaled = ops.scale(second, 0.5)
    return values + scaled, indices


def case_getitem_tuple_outputs() -> Case:
    return Case(
        _traced(f_getitem_tuple_outputs),
        ("stitchtest::pair", "stitchtest::scale"),
        lambda seed: randn(seed, (4, 8), (4, 8)),
        f_getitem_tuple_outputs,
    )


def f_kwargs(x: Tensor, y: Tensor) -> Tensor:
    h = torch.cat(tensors=[x, y], dim=-1)
    s = ops.scale(h, 2.0, dtype=torch.float64, tag="kw")
    w = ops.weighted_sum(xs=[s, h], weights=[0.5, -2.0])
    return torch.sum(w, dim=-1, keepdim=True)


def case_kwargs() -> Case:
    return Case(
        _traced(f_kwargs),
        ("stitchtest::scale", "stitchtest::weighted_sum"),
        lambda seed: randn(seed, (3, 4), (3, 2)),
        f_kwargs,
    )


def f_device_dtype_consts(x: Tensor) -> Tensor:
    cpu = torch.device("cpu")
    a = ops.convert(
        x,
        dtype=torch.float64,
        device=cpu,
        layout=torch.strided,
        memory_format=torch.contiguous_format,
    )
    b = a.sum(-1, keepdim=True) * a
    c = ops.convert(
        b,
        dtype=torch.float64,
        device=torch.device("cpu"),
        layout=torch.strided,
        memory_format=torch.preserve_format,
    )
    d = ops.convert(
        c.t(),
        dtype=torch.float32,
        device=cpu,
        layout=torch.strided,
        memory_format=torch.contiguous_format,
    )
    return d


def case_device_dtype_consts() -> Case:
    return Case(
        _traced(f_device_dtype_consts),
        ("stitchtest::convert",),
        lambda seed: randn(seed, (3, 5)),
        f_device_dtype_consts,
    )


def f_nested_outputs(x: Tensor, y: Tensor) -> Any:
    a = x.relu()
    b = ops.scale(a, 3.0)
    c = b + y
    return (a, [b, (c, None)], {"sum": c.sum(), "x": x}, 7)


def case_nested_outputs() -> Case:
    return Case(
        _traced(f_nested_outputs),
        ("stitchtest::scale",),
        lambda seed: randn(seed, (2, 3), (2, 3)),
        f_nested_outputs,
    )


def f_dead_values(x: Tensor, unused: Tensor, y: Tensor) -> Tensor:
    dead = x * 100.0  # noqa: F841 - dead on purpose
    out = torch.empty_like(x)
    ops.add_into(x, y, out)
    p = ops.pair(out)
    p[0]  # an unused getitem
    return p[1] + 1


def case_dead_values() -> Case:
    return Case(
        _traced(f_dead_values),
        ("stitchtest::add_into", "stitchtest::pair"),
        lambda seed: randn(seed, (4,), (4,), (4,)),
        f_dead_values,
    )


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 6)
        self.norm = nn.LayerNorm(6)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.fc2(torch.nn.functional.gelu(self.fc1(x))))


def case_no_splitting_op() -> Case:
    model = TinyMLP().eval()
    return Case(
        _traced(model),
        ("stitch::attention", "stitchtest::scale"),
        lambda seed: randn(seed, (5, 6)),
        model,
    )


def f_splitting_first_and_last(x: Tensor, y: Tensor) -> Tensor:
    a = ops.scale(x, 2.0)
    b = a * y + 1
    return ops.scale(b, -1.5)


def case_splitting_first_and_last() -> Case:
    return Case(
        _traced(f_splitting_first_and_last),
        (torch.ops.stitchtest.scale,),
        lambda seed: randn(seed, (3, 3), (3, 3)),
        f_splitting_first_and_last,
    )


def f_consecutive_splitting_ops(x: Tensor, y: Tensor) -> Tensor:
    h = x - y
    a = ops.scale(h, 2.0)
    b = ops.scale(a, 3.0, tag="second")
    out = torch.empty_like(b)  # allocation-only: merged into the next piece
    ops.add_into(a, b, out)
    return out * y


def case_consecutive_splitting_ops() -> Case:
    return Case(
        _traced(f_consecutive_splitting_ops),
        (torch.ops.stitchtest.scale.default, "stitchtest::add_into"),
        lambda seed: randn(seed, (2, 4), (2, 4)),
        f_consecutive_splitting_ops,
    )


def f_size_across_pieces(x: Tensor, y: Tensor) -> Tensor:
    size = x.size()
    a = ops.scale(x.flatten(), 2.0)
    b = a.view(size) + y
    c = ops.scale(b, 0.5)
    return c.reshape(size[0], -1) * size[-1]


def case_size_across_pieces() -> Case:
    gm = _traced(f_size_across_pieces)
    example = randn(0, (3, 4), (3, 4))
    ShapeProp(gm).propagate(*example)
    return Case(
        gm,
        ("stitchtest::scale",),
        lambda seed: randn(seed, (3, 4), (3, 4)),
        f_size_across_pieces,
    )


class InlinedConstants(nn.Module):
    """A splitting piece full of literals, slicing and a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.arange(12.0).reshape(3, 4))

    def forward(self, x: Tensor) -> Any:
        h = x * 2
        e = ops.encode(
            h,
            [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 1e-300, 2.5],
            True,
            'it\'s "quoted"\n',
        )
        p = ops.pair(e)
        strided = p[0][..., ::2]
        tail = p[1][1:, None]
        mixed = ops.weighted_sum([self.table, h], [-0.25, 1.0])
        return strided + 1, tail * 2, mixed


def case_inlined_constants() -> Case:
    model = InlinedConstants()
    return Case(
        _traced(model),
        ("stitchtest::encode", "stitchtest::pair", "stitchtest::weighted_sum"),
        lambda seed: randn(seed, (3, 4)),
        model,
    )


def f_many_pieces(x: Tensor) -> Tensor:
    for i in range(6):
        x = ops.scale(x.sin() + i, 0.5)
    return x


def case_many_pieces() -> Case:
    """Thirteen pieces: submod_10 must come after submod_9."""
    return Case(
        _traced(f_many_pieces),
        ("stitchtest::scale",),
        lambda seed: randn(seed, (4,)),
        f_many_pieces,
    )


def case_bare_attention() -> Case:
    """Only a splitting op (and its output buffer): one inlined piece, no calls."""
    example = EXAMPLES["bare_attention"]
    model, inputs, gm = example.trace()

    def make_inputs(seed: int) -> tuple[Any, ...]:
        gen = torch.Generator().manual_seed(seed)
        return tuple(
            (
                torch.randn(t.shape, generator=gen, dtype=t.dtype)
                if t.is_floating_point()
                else torch.randint(0, model.max_len, t.shape, generator=gen)
            )
            for t in inputs
        )

    return Case(gm, example.splitting_ops, make_inputs, model, model.reset_kv_caches)


# Parameters named as Dynamo names a module's weights and a keyword argument
# (NOTE: [names from the model's paths] in codegen/readable.py): the emitted
# function's parameters take the model's paths instead.
def f_dynamo_names(
    l_kwargs_hidden_states_: Tensor,
    l_self_modules_model_modules_layers_modules_0_modules_mlp_modules_up_proj_parameters_weight_: Tensor,
    l_self_modules_model_modules_layers_modules_1_modules_mlp_modules_up_proj_parameters_weight_: Tensor,
    l_self_modules_model_modules_norm_parameters_weight_: Tensor,
    l_self_modules_model_modules_norm_parameters_bias_: Tensor,
    l_self_modules_lm_head_parameters_weight_: Tensor,
) -> Tensor:
    x = l_kwargs_hidden_states_
    for w in (
        l_self_modules_model_modules_layers_modules_0_modules_mlp_modules_up_proj_parameters_weight_,
        l_self_modules_model_modules_layers_modules_1_modules_mlp_modules_up_proj_parameters_weight_,
    ):
        x = x + ops.scale(torch.nn.functional.linear(x, w), 0.5)
    x = torch.nn.functional.layer_norm(
        x,
        (8,),
        l_self_modules_model_modules_norm_parameters_weight_,
        l_self_modules_model_modules_norm_parameters_bias_,
    )
    return torch.nn.functional.linear(x, l_self_modules_lm_head_parameters_weight_)


def case_dynamo_names() -> Case:
    return Case(
        _traced(f_dynamo_names),
        ("stitchtest::scale",),
        lambda seed: randn(seed, (4, 8), (8, 8), (8, 8), (8,), (8,), (16, 8)),
        f_dynamo_names,
    )


CASES: dict[str, Callable[[], Case]] = {
    "two_layer_attention": case_two_layer_attention,
    "llama_3_layer": case_llama_3_layer,
    "llama_dynamic_batch": case_llama_dynamic_batch,
    "getitem_tuple_outputs": case_getitem_tuple_outputs,
    "kwargs": case_kwargs,
    "device_dtype_consts": case_device_dtype_consts,
    "nested_outputs": case_nested_outputs,
    "dead_values": case_dead_values,
    "no_splitting_op": case_no_splitting_op,
    "splitting_first_and_last": case_splitting_first_and_last,
    "consecutive_splitting_ops": case_consecutive_splitting_ops,
    "size_across_pieces": case_size_across_pieces,
    "inlined_constants": case_inlined_constants,
    "many_pieces": case_many_pieces,
    "bare_attention": case_bare_attention,
    "dynamo_names": case_dynamo_names,
}


@dataclasses.dataclass(frozen=True)
class Emitted:
    case: Case
    split_gm: fx.GraphModule
    items: list[SplitItem]
    code: str
    submod_names: list[str]
    consts: list[Any]


@functools.cache
def emit_case(name: str) -> Emitted:
    """Build, split and emit a case once per test session."""
    case = CASES[name]()
    split_gm, items = split_graph(case.gm, list(case.splitting_ops))
    code, submod_names, consts = generate_execution_code(split_gm)
    return Emitted(case, split_gm, items, code, submod_names, consts)


def echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Returns its arguments: a call target for checking how arguments are emitted."""
    return args, kwargs
