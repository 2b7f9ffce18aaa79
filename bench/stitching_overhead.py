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
import os
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stitching_floor import compile_floor, floor_source  # noqa: E402, F401
from stitching_graph import (  # noqa: E402, F401
    HIDDEN,
    LAYER_WEIGHTS,
    OP_NAME,
    OP_NAMESPACE,
    TOKENS,
    build_graph,
    example_inputs,
    make_attention_python,
    register_attention_op,
)

VARIANTS = ("fx.Interpreter", "FX split_gm", "emitted", "floor calls", "floor inline")


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
