"""The decoder-shaped graph of bench/stitching_overhead.py and bench/codegen_speed.py.

``build_graph(L)`` makes an FX graph of L decoder layers around a custom
attention op (``stitchbench::attn``, registered by ``register_attention_op``
with a kernel that returns at once), which the benchmarks split into 2L+1
pieces; ``example_inputs`` gives its inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx

OP_NAMESPACE = "stitchbench"
OP_NAME = f"{OP_NAMESPACE}::attn"
HIDDEN = 8  # tiny tensors: the pieces' work is not what is measured
TOKENS = 2
LAYER_WEIGHTS = ("norm1", "qkv", "o", "norm2", "mlp")


# -- the attention op ---------------------------------------------------------------


def _attention_kernel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor
) -> None:
    """Kernel of ``stitchbench::attn``: returns at once (only dispatch is timed)."""
    return None


def make_attention_python() -> Callable[..., None]:
    """The ``--attention python`` stand-in for the op: a plain function.

    It is made in a function so that no import path names it: the emitted code
    then reads it from its constants table whether this file runs as a script
    or is imported.
    """

    def attention_python(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor
    ) -> None:
        return None

    return attention_python


def register_attention_op() -> torch.library.Library | None:
    """Define ``stitchbench::attn`` unless already defined; keep the result alive.

    Registered with ``torch.library.Library.impl`` as serving stacks register
    their attention ops.  (``torch.library.custom_op`` adds a Python wrapper that
    costs several microseconds a call, which would swamp what is measured here.)
    """
    if hasattr(getattr(torch.ops, OP_NAMESPACE), "attn"):
        return None
    lib = torch.library.Library(OP_NAMESPACE, "FRAGMENT")
    lib.define("attn(Tensor q, Tensor k, Tensor v, Tensor(a!) out) -> ()")
    lib.impl("attn", _attention_kernel, "CompositeExplicitAutograd")
    return lib


# -- the model graph ----------------------------------------------------------------


def dynamo_name(name: str) -> str:
    """The name Dynamo gives the placeholder ``name`` of :func:`build_graph`
    (``layers_3_qkv`` -> ``l_self_modules_model_modules_layers_modules_3_
    modules_qkv_parameters_weight_``), as a transformers model's graph has it."""
    if name in ("hidden_states", "positions"):
        return f"l_{name}_"
    modules = ["model", *name.split("_", 2)]
    return "l_self_" + "".join(f"modules_{m}_" for m in modules) + "parameters_weight_"


def build_graph(num_layers: int, dynamo_names: bool = False) -> fx.GraphModule:
    """A decoder-shaped graph with Dynamo-style lifted weights as placeholders,
    named as Dynamo names them with ``dynamo_names`` (:func:`dynamo_name`).

    Between two attention ops sit the previous layer's o-proj, residual add,
    norm and MLP and the next layer's norm and qkv projection, so a middle piece
    takes 8 inputs and returns 5 values (q, k, v, the attention output buffer
    and the residual), as in a served llama.  The op writes into ``out``, which
    the piece before allocates, like vLLM's ``unified_attention_with_output``.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers={num_layers} must be at least 1")
    aten = torch.ops.aten
    attn = getattr(torch.ops, OP_NAMESPACE).attn.default
    g = fx.Graph()

    def placeholder(name: str) -> fx.Node:
        return g.placeholder(dynamo_name(name) if dynamo_names else name)

    x = placeholder("hidden_states")
    positions = placeholder("positions")

    weights = [
        {key: placeholder(f"layers_{i}_{key}") for key in LAYER_WEIGHTS}
        for i in range(num_layers)
    ]
    final_norm = placeholder("norm")

    def after_attention(out: fx.Node, residual: fx.Node, w: dict) -> fx.Node:
        h = g.call_function(aten.mm.default, (out, w["o"]))
        residual = g.call_function(aten.add.Tensor, (h, residual))
        h = g.call_function(aten.mul.Tensor, (residual, w["norm2"]))
        h = g.call_function(aten.mm.default, (h, w["mlp"]))
        return g.call_function(aten.add.Tensor, (h, residual))

    residual = x
    out = x  # replaced by the first layer's attention buffer
    for i, w in enumerate(weights):
        if i:
            residual = after_attention(out, residual, weights[i - 1])
        h = g.call_function(aten.mul.Tensor, (residual, w["norm1"]))
        h = g.call_function(aten.add.Tensor, (h, positions))
        q = g.call_function(aten.mm.default, (h, w["qkv"]))
        k = g.call_function(aten.mul.Tensor, (q, 2.0))
        v = g.call_function(aten.mul.Tensor, (q, 3.0))
        out = g.call_function(aten.empty_like.default, (q,))
        g.call_function(attn, (q, k, v, out))
    residual = after_attention(out, residual, weights[-1])
    h = g.call_function(aten.mul.Tensor, (residual, final_norm))
    g.output(h)
    return fx.GraphModule(torch.nn.Module(), g)


def example_inputs(num_layers: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    inputs = [rand(TOKENS, HIDDEN), rand(TOKENS, 1)]
    for _ in range(num_layers):
        inputs += [rand(HIDDEN), rand(HIDDEN, HIDDEN), rand(HIDDEN, HIDDEN)]
        inputs += [rand(HIDDEN), rand(HIDDEN, HIDDEN)]
    inputs.append(rand(HIDDEN))
    return inputs
