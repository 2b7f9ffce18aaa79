"""Per-forward stitching cost with pieces that do no work.

Run: ``python bench/stitching_overhead.py [--layers 8 32 80] [--iters N]``.

A decoder-shaped FX graph of L layers is split at a custom attention op into
2L+1 pieces: L+1 "compiled" pieces and L attention pieces.  The compiled pieces
are replaced, as serving stacks do, by plain Python callables installed into
``split_gm.__dict__[name]``; each returns outputs it computed once up front, so
it does no work.  The attention pieces stay the fx.GraphModules that
``split_graph`` made, running an op whose kernel returns at once.  What is left
to time is the stitching: calling pieces, passing values, unpacking outputs.

Five ways to run the same pieces are timed side by side in one process:

``fx.Interpreter``  ``torch.fx.Interpreter(split_gm).run(...)``
``FX split_gm``     ``split_gm(...)``, the GraphModule's own generated forward
``emitted``         ``generate_execution_code`` + ``compile_execution_fn`` (the
                    one-op attention pieces run at their call sites, and values
                    are deleted after their last use)
``floor calls``     the floor the targets name: a hand-written straight-line
                    function calling the same callables (compiled pieces and the
                    attention GraphModules' ``forward``), pieces bound to globals,
                    outputs unpacked, no ``del``
``floor inline``    a stricter floor that also runs the attention pieces' ops
                    inline instead of calling the pieces, and deletes nothing
                    (see ``floor_source``)

and in two settings of the attention op (``--attention``):

``op``      a ``torch.library`` op (the registration path serving stacks use
            for their attention ops) with a kernel that returns at once; every
            variant pays one dispatcher round trip per layer.
``python``  the same pieces with the attention node retargeted, after
            splitting, to a plain Python function that returns at once:
            stitching overhead alone, nothing of torch's dispatcher.
"""

from __future__ import annotations

import argparse
import gc
import operator
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from stitch.codegen import SplitItem, generate_execution_code, split_graph
from stitch.runtime import compile_execution_fn
from stitch.runtime.tables import markdown_table

OP_NAMESPACE = "stitchbench"
OP_NAME = f"{OP_NAMESPACE}::attn"
HIDDEN = 8  # tiny tensors: the pieces' work is not what is measured
TOKENS = 2
LAYER_WEIGHTS = ("norm1", "qkv", "o", "norm2", "mlp")
VARIANTS = ("fx.Interpreter", "FX split_gm", "emitted", "floor calls", "floor inline")


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


def build_graph(num_layers: int) -> fx.GraphModule:
    """A decoder-shaped graph with Dynamo-style lifted weights as placeholders.

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
    x = g.placeholder("hidden_states")
    positions = g.placeholder("positions")

    weights = [
        {key: g.placeholder(f"layers_{i}_{key}") for key in LAYER_WEIGHTS}
        for i in range(num_layers)
    ]
    final_norm = g.placeholder("norm")

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


# -- do-nothing pieces ----------------------------------------------------------------


def _returns(value: Any) -> Callable[..., Any]:
    def compiled_piece(*args: Any) -> Any:
        return value

    return compiled_piece


def record_piece_outputs(
    split_gm: fx.GraphModule, inputs: Sequence[Any]
) -> tuple[dict[str, Any], Any]:
    """Run ``split_gm`` once; what each ``call_module`` returned, and the result."""
    outputs: dict[str, Any] = {}

    class Recorder(fx.Interpreter):
        def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
            result = super().call_module(target, args, kwargs)
            outputs[target] = result
            return result

    result = Recorder(split_gm).run(*inputs)
    return outputs, result


def install_do_nothing_pieces(
    split_gm: fx.GraphModule, items: Sequence[SplitItem], inputs: Sequence[Any]
) -> tuple[dict[str, Callable[..., Any]], Any]:
    """Shadow each compiled piece by a plain callable returning its recorded outputs.

    Installed into ``split_gm.__dict__``, as serving stacks install compiled
    pieces: attribute lookup then finds the callable before ``nn.Module``'s
    ``_modules``, so ``split_gm.forward`` and ``fx.Interpreter`` call it too.
    Returns the callables and the result of the recording run, which every
    variant must reproduce.
    """
    recorded, result = record_piece_outputs(split_gm, inputs)
    callables: dict[str, Callable[..., Any]] = {}
    for item in items:
        if not item.is_splitting_graph:
            name = item.submod_name
            callables[name] = _returns(recorded[name])
            split_gm.__dict__[name] = callables[name]
    return callables, result


def retarget_attention(split_gm: fx.GraphModule, target: Callable[..., Any]) -> None:
    """Point every attention node of the splitting pieces at ``target``."""
    op = getattr(torch.ops, OP_NAMESPACE).attn.default
    for module in split_gm.children():
        if not isinstance(module, fx.GraphModule):
            continue
        changed = False
        for node in module.graph.nodes:
            if node.op == "call_function" and node.target is op:
                node.target = target
                changed = True
        if changed:
            module.recompile()


# -- the floor ------------------------------------------------------------------------


class _FloorWriter:
    """Writes the straight-line function a person would write for ``split_gm``."""

    def __init__(self, split_gm: fx.GraphModule, inline_attention: bool = True) -> None:
        self.split_gm = split_gm
        self.inline_attention = inline_attention
        self.globals: dict[str, Any] = {}
        self._global_ids: dict[int, str] = {}
        self.lines: list[str] = []
        self.params: list[str] = []
        self._count = 0

    def fresh(self) -> str:
        self._count += 1
        return f"v{self._count}"

    def bind(self, obj: Any, prefix: str) -> str:
        if id(obj) not in self._global_ids:
            name = f"{prefix}{len(self._global_ids)}"
            self._global_ids[id(obj)] = name
            self.globals[name] = obj
        return self._global_ids[id(obj)]

    def render(self, value: Any, env: dict[fx.Node, str]) -> str:
        if isinstance(value, fx.Node):
            return env[value]
        if isinstance(value, (tuple, list)):
            inner = ", ".join(self.render(v, env) for v in value)
            if isinstance(value, list):
                return f"[{inner}]"
            return f"({inner},)" if len(value) == 1 else f"({inner})"
        if value is None or type(value) in (bool, int, float, str):
            return repr(value)
        return self.bind(value, "_const")

    def write(self) -> str:
        env: dict[fx.Node, str] = {}
        for node in self.split_gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = self.fresh()
                self.params.append(env[node])
            elif node.op == "get_attr":
                env[node] = self.bind(getattr(self.split_gm, node.target), "_const")
            elif node.op == "call_module":
                self._piece(node, env)
            elif node.op == "call_function" and node.target is operator.getitem:
                continue  # unpacked at the call (see _piece)
            elif node.op == "output":
                self.lines.append(f"return {self.render(node.args[0], env)}")
            else:
                raise ValueError(f"unexpected top-level node {node.format_node()}")
        body = "\n".join(f"    {line}" for line in self.lines)
        return f"def floor_fn({', '.join(self.params)}):\n{body}\n"

    def _piece(self, node: fx.Node, env: dict[fx.Node, str]) -> None:
        args = ", ".join(self.render(a, env) for a in node.args)
        module = self.split_gm._modules[node.target]
        installed = self.split_gm.__dict__.get(node.target)
        if installed is None and not self.inline_attention:
            # "floor (calls)": the attention piece is called like any other
            # callable, through its GraphModule's forward (one frame per piece).
            installed = module.forward
        if installed is not None:
            # A compiled piece: call the very callable every variant calls.
            call = f"{self.bind(installed, '_piece')}({args})"
            output = next(n for n in module.graph.nodes if n.op == "output")
            returned = output.args[0]
            if isinstance(returned, (tuple, list)) and not returned:
                self.lines.append(call)
            elif isinstance(returned, (tuple, list)):
                by_index = {
                    u.args[1]: u for u in node.users if u.target is operator.getitem
                }
                names = []
                for index in range(len(returned)):
                    user = by_index.get(index)
                    names.append(self._name(user, env) if user is not None else "_")
                targets = ", ".join(names) + ("," if len(names) == 1 else "")
                self.lines.append(f"{targets} = {call}")
            elif node.users:
                self.lines.append(f"{self._name(node, env)} = {call}")
            else:
                self.lines.append(call)
            return
        # NOTE: [the floor inlines the attention pieces' ops]
        # The floor runs the attention piece's ops inline, with each target bound
        # to a global name: the same work as GraphModule.forward, without its
        # frame or the attribute walk to ``torch.ops.<ns>.<op>.<overload>``.  That
        # is the least any stitching can do, so it is the strictest floor.
        inner: dict[fx.Node, str] = {}
        placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
        for ph, arg in zip(placeholders, node.args, strict=False):
            inner[ph] = self.render(arg, env)
        for n in module.graph.nodes:
            if n.op in ("call_function", "call_method"):
                if n.op == "call_method":
                    fn = f"{self.render(n.args[0], inner)}.{n.target}"
                    call_args = n.args[1:]
                else:
                    fn = self.bind(n.target, "_op")
                    call_args = n.args
                parts = [self.render(a, inner) for a in call_args]
                parts += [f"{k}={self.render(v, inner)}" for k, v in n.kwargs.items()]
                call = f"{fn}({', '.join(parts)})"
                if n.users:
                    inner[n] = self.fresh()
                    self.lines.append(f"{inner[n]} = {call}")
                else:
                    self.lines.append(call)
            elif n.op == "output":
                returned = n.args[0]
                for user in node.users:
                    if user.target is operator.getitem:
                        env[user] = self.render(returned[user.args[1]], inner)
                    else:
                        env[user] = self.render(returned, inner)
            elif n.op != "placeholder":
                raise ValueError(f"unexpected node in a piece: {n.format_node()}")

    def _name(self, node: fx.Node, env: dict[fx.Node, str]) -> str:
        if not node.users:
            return "_"
        env[node] = self.fresh()
        return env[node]


def floor_source(
    split_gm: fx.GraphModule, inline_attention: bool = True
) -> tuple[str, dict[str, Any]]:
    """Source of the hand-written straight-line function and the globals it reads."""
    writer = _FloorWriter(split_gm, inline_attention)
    return writer.write(), writer.globals


def compile_floor(
    split_gm: fx.GraphModule, inline_attention: bool = True
) -> Callable[..., Any]:
    source, namespace = floor_source(split_gm, inline_attention)
    exec(compile(source, "<stitching-floor>", "exec"), namespace)  # noqa: S102
    return namespace["floor_fn"]


# -- the measurement ------------------------------------------------------------------


def build_variants(
    num_layers: int, attention: str
) -> tuple[dict[str, Callable[..., Any]], list[torch.Tensor], torch.Tensor]:
    """The five ways to run the same pieces, their inputs and the expected output."""
    gm = build_graph(num_layers)
    inputs = example_inputs(num_layers)
    split_gm, items = split_graph(gm, [OP_NAME])
    n_attention = sum(item.is_splitting_graph for item in items)
    if (len(items), n_attention) != (2 * num_layers + 1, num_layers):
        raise RuntimeError(
            f"expected {2 * num_layers + 1} pieces ({num_layers} attention), got "
            f"{len(items)} ({n_attention} attention)"
        )
    if attention == "python":
        retarget_attention(split_gm, make_attention_python())
    callables, expected = install_do_nothing_pieces(split_gm, items, inputs)

    code, submod_names, consts = generate_execution_code(split_gm)
    emitted = compile_execution_fn(code, callables, submod_names, consts)
    interpreter = fx.Interpreter(split_gm)  # built once, reused (kinder to FX)
    variants = {
        "fx.Interpreter": interpreter.run,
        "FX split_gm": split_gm,
        "emitted": emitted,
        "floor calls": compile_floor(split_gm, inline_attention=False),
        "floor inline": compile_floor(split_gm),
    }
    for name, fn in variants.items():
        result = fn(*inputs)
        if result is not expected:
            raise RuntimeError(f"variant {name!r} computed a different result")
    return variants, inputs, expected


CLOCKS: dict[str, Callable[[], int]] = {
    "perf_counter": time.perf_counter_ns,
    # CPU time of this thread: time spent descheduled does not count, which
    # steadies the numbers on a machine other processes keep busy.
    "thread_time": time.thread_time_ns,
}


def time_forward_ns(
    fn: Callable[..., Any],
    args: Sequence[Any],
    iters: int,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> float:
    loop = range(iters)
    start = clock()
    for _ in loop:
        fn(*args)
    return (clock() - start) / iters


def calibrate_iters(
    fn: Callable[..., Any], args: Sequence[Any], round_ms: float
) -> int:
    """How many forwards of ``fn`` take about ``round_ms`` milliseconds."""
    iters = 1
    while True:
        elapsed_ms = time_forward_ns(fn, args, iters) * iters / 1e6
        if elapsed_ms >= round_ms / 4 or iters >= 1_000_000:
            return max(1, round(iters * round_ms / max(elapsed_ms, 1e-3)))
        iters *= 4


def measure(
    variants: dict[str, Callable[..., Any]],
    args: Sequence[Any],
    iters: int | None,
    repeats: int,
    round_ms: float,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> tuple[dict[str, float], dict[str, int]]:
    """Median microseconds per forward of each variant, and the forwards per round.

    Each round times every variant once, in turn, so drift of the machine
    touches all alike; the median over rounds discards rounds another process
    disturbed.  Without ``iters`` each variant runs as many forwards per round
    as take about ``round_ms``.  A warm-up round is dropped, and the garbage
    collector is off while timing, as ``timeit`` does.
    """
    samples: dict[str, list[float]] = {name: [] for name in variants}
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.inference_mode():
            counts = {
                name: iters or calibrate_iters(fn, args, round_ms)
                for name, fn in variants.items()
            }
            for round_ in range(repeats + 1):
                for name, fn in variants.items():
                    ns = time_forward_ns(fn, args, counts[name], clock)
                    if round_:
                        samples[name].append(ns)
    finally:
        if was_enabled:
            gc.enable()
    medians = {name: statistics.median(s) / 1000 for name, s in samples.items()}
    return medians, counts


def format_table(rows: list[tuple[int, dict[str, float]]]) -> str:
    """One row per layer count: each variant's microseconds per forward, then
    the ratios of the emitted function to the floors and to FX's split_gm, and
    the emitted function's cost over the floor per layer."""
    headers = ("layers", "pieces", *VARIANTS, "emit/floor calls", "emit/floor inline")
    headers += ("split_gm/emitted", "(emit-floor)/L")
    cells = []
    for layers, us in rows:
        floor, emitted = us["floor calls"], us["emitted"]
        cells.append(
            (
                layers,
                2 * layers + 1,
                *(f"{us[v]:.1f}" for v in VARIANTS),
                f"{emitted / floor:.2f}x",
                f"{emitted / us['floor inline']:.2f}x",
                f"{us['FX split_gm'] / emitted:.1f}x",
                f"{(emitted - floor) * 1000 / layers:.0f} ns",
            )
        )
    return markdown_table(headers, cells, align="r" * len(headers))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="stitching_overhead",
        description=(
            "Per-forward stitching cost (microseconds) of 2L+1 do-nothing pieces: "
            "fx.Interpreter vs FX split_gm vs Stitch's emitted function vs a "
            "hand-written floor."
        ),
    )
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[8, 32, 80],
        metavar="L",
        help="layer counts to measure (default: 8 32 80)",
    )
    parser.add_argument(
        "--iters",
        type=int,
        default=None,
        metavar="N",
        help="forwards per timed round for every variant (default: as many as "
        "take --round-ms)",
    )
    parser.add_argument(
        "--round-ms",
        type=float,
        default=10.0,
        metavar="MS",
        help="target length of one variant's timed round without --iters "
        "(default: 10)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=21,
        metavar="R",
        help="timed rounds; the median is reported (default: 21)",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="perf_counter",
        help="perf_counter: wall time (default); thread_time: CPU time of the "
        "thread, for a machine other processes keep busy",
    )
    parser.add_argument(
        "--attention",
        choices=("op", "python", "both"),
        default="both",
        help="attention piece runs a torch.library op, a plain Python function, "
        "or one table of each (default: both)",
    )
    parser.add_argument(
        "--show-source",
        action="store_true",
        help="print the emitted and the floor source of the smallest layer count",
    )
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.layers):
        parser.error("--layers values must be >= 1")
    if args.iters is not None and args.iters < 1:
        parser.error("--iters must be >= 1")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.round_ms <= 0:
        parser.error("--round-ms must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    lib = register_attention_op()  # noqa: F841 - the registration lives with lib
    modes = ("op", "python") if args.attention == "both" else (args.attention,)
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.machine()}; {args.clock} clock, median of {args.repeats} "
        "rounds; microseconds per forward"
    )
    if args.show_source:
        layers = min(args.layers)
        gm = build_graph(layers)
        split_gm, items = split_graph(gm, [OP_NAME])
        if modes == ("python",):
            retarget_attention(split_gm, make_attention_python())
        install_do_nothing_pieces(split_gm, items, example_inputs(layers))
        print(generate_execution_code(split_gm)[0])
        print(floor_source(split_gm)[0])
    started = time.perf_counter()
    for mode in modes:
        rows = []
        for layers in args.layers:
            variants, inputs, _ = build_variants(layers, mode)
            medians, _ = measure(
                variants,
                inputs,
                args.iters,
                args.repeats,
                args.round_ms,
                CLOCKS[args.clock],
            )
            rows.append((layers, medians))
        title = {
            "op": "attention = torch.library op (one dispatcher call per layer)",
            "python": "attention = plain Python function (stitching alone)",
        }[mode]
        print(f"\n{title}\n\n{format_table(rows)}")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
