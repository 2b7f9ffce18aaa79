"""How long emitting the stitching source takes.

Run: ``python bench/codegen_speed.py [--layers 8 32 80] [--repeats N]
[--names dynamo]``.

The graph is the decoder-shaped graph of ``bench/stitching_overhead.py`` (L
layers, 2L+1 pieces, 5 weight placeholders per layer), split at its attention
op; with ``--names dynamo`` its placeholders are named as Dynamo names a
transformers model's (``l_self_modules_model_modules_layers_modules_3_...``),
which the code generator turns back into readable names.

Two ways to get the same source are timed side by side, alternating:

``generate``   ``generate_execution_code(split_gm)``: lowering, templates, and
               each long statement laid out as black would (codegen/layout.py).
``via black``  the old path: the same lowering, the templates with every
               statement on one line, then ``black.format_str`` over the whole
               module.

Before timing, both are checked to give the same text, a fixed point of black.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence

import black
import torch

from stitch.codegen import generate_execution_code, lower_execution, split_graph
from stitch.codegen.emit import BLACK_MODE, render_module_with_black
from stitch.runtime.tables import markdown_table

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stitching_graph  # noqa: E402  (the graph builder, next to this file)
import stitching_overhead  # noqa: E402  (its clocks)

CLOCKS = stitching_overhead.CLOCKS  # nanosecond clocks, by --clock name


def old_path(split_gm: object) -> str:
    context, _, _ = lower_execution(split_gm)  # type: ignore[arg-type]
    return render_module_with_black(context)


def new_path(split_gm: object) -> str:
    return generate_execution_code(split_gm)[0]  # type: ignore[arg-type]


def measure(
    split_gm: object, repeats: int, clock: Callable[[], int]
) -> dict[str, float]:
    """Median milliseconds of each path, the paths run in alternation."""
    samples: dict[str, list[float]] = {"generate": [], "via black": []}
    paths = {"generate": new_path, "via black": old_path}
    for _ in range(repeats):
        for name, fn in paths.items():
            start = clock()
            fn(split_gm)
            samples[name].append((clock() - start) / 1e6)
    return {name: statistics.median(s) for name, s in samples.items()}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="codegen_speed",
        description="Milliseconds to emit the stitching source: generate_execution_code "
        "against lowering + black.format_str over the whole module.",
    )
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[8, 32, 80],
        metavar="L",
        help="layer counts (default: 8 32 80)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=11,
        metavar="N",
        help="timed runs of each path; the median is reported (default: 11)",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="perf_counter",
        help="perf_counter: wall time (default); thread_time: CPU time of the thread",
    )
    parser.add_argument(
        "--names",
        choices=("plain", "dynamo"),
        default="plain",
        help="plain: placeholders named layers_3_qkv (default); dynamo: as Dynamo "
        "names a transformers model's",
    )
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.layers):
        parser.error("--layers values must be >= 1")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def format_table(rows: Sequence[tuple[int, int, int, dict[str, float]]]) -> str:
    """One row per (layers, pieces, lines of source, ms per path): both paths'
    milliseconds and how many times faster ``generate`` is."""
    headers = ("layers", "pieces", "lines", "generate", "via black", "speedup")
    cells = [
        (
            layers,
            pieces,
            lines,
            f"{ms['generate']:.1f}",
            f"{ms['via black']:.1f}",
            f"{ms['via black'] / ms['generate']:.0f}x",
        )
        for layers, pieces, lines, ms in rows
    ]
    return markdown_table(headers, cells, align="r" * len(headers))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    lib = stitching_graph.register_attention_op()  # noqa: F841 - keeps the op
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, black "
        f"{black.__version__}, {platform.machine()}; {args.clock} clock, median of "
        f"{args.repeats}; {args.names} names; milliseconds\n"
    )
    rows = []
    for layers in args.layers:
        gm = stitching_graph.build_graph(layers, args.names == "dynamo")
        split_gm, items = split_graph(gm, [stitching_graph.OP_NAME])
        code = new_path(split_gm)
        if (
            code != old_path(split_gm)
            or black.format_str(code, mode=BLACK_MODE) != code
        ):
            raise RuntimeError(f"{layers} layers: the two paths emit different text")
        ms = measure(split_gm, args.repeats, CLOCKS[args.clock])
        rows.append((layers, len(items), code.count("\n"), ms))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
