"""``stitch check``: its arguments, the model they name, and the report of
:func:`stitch.runtime.check.check_model` (which piece changed the numbers)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from .model_choice import add_model_choice, resolve_model
from .options import add_compile_options, add_model_options

# The sizes `stitch run` runs by default, so that a check of a run's model
# covers the same forwards.
from .run_cmd import SIZES as DEFAULT_SIZES


def add_check(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="find the compiled piece that changed the numbers",
        description=(
            "Compile a model as `stitch run` does (same options, same cache), then "
            "run every size three ways through the emitted stitching source: on "
            "the uncompiled pieces, on the compiled pieces each beside its "
            "uncompiled GraphModule on the same inputs, and, with CUDA graphs, on "
            "replayed graphs each beside a direct call.  Prints a row per piece "
            "(its modules, its lines in the source, its largest absolute and "
            "relative error against its dtype's tolerance, the first output "
            "beyond it), names the first piece beyond tolerance and whether the "
            "difference arose inside it or came from earlier.  Exit status 1 "
            "when a piece, or the whole forward, is beyond tolerance."
        ),
    )
    add_check_arguments(parser)
    parser.set_defaults(handler=run_check)


def add_check_arguments(parser: Any) -> None:
    """The model (the choice `stitch run` offers) and the options of a check."""
    # NOTE: [one resolution of the model choice] (model_choice.py): every way
    # of naming a model to `stitch run` names it here too.
    add_model_choice(parser)
    add_model_options(parser, DEFAULT_SIZES)
    add_compile_options(parser)


def run_check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    # sys.stdout as it is now, not when this module was imported (a test's capture).
    out = out or sys.stdout
    if not args.example and (args.compile_sizes or args.split_points):
        print(
            "stitch check: error: --compile-sizes and --split-points apply to "
            "--example only",
            file=sys.stderr,
        )
        return 2
    from stitch.runtime.check import check_model

    title, model, forwards, config, compile_args = _model(args)
    start = time.perf_counter()
    report = check_model(model, forwards, config, **compile_args)
    seconds = time.perf_counter() - start
    files = sorted({p.source_file for p in report.pieces})
    sizes = ",".join(str(s) for s in args.sizes)
    print(f"{title}, backend {args.backend}, sizes {sizes}", file=out)
    print(
        f"  compiled and checked in {seconds:.2f}s: {len(report.pieces)} compiled "
        f"pieces; {'edited' if args.source else 'emitted'} source: "
        f"{', '.join(files) or '-'}",
        file=out,
    )
    print("\n" + report.table() + "\n", file=out)
    print("whole forward against eager:\n\n" + report.forward_table() + "\n", file=out)
    print(report.verdict(), file=out)
    return 0 if report.ok else 1


def _model(args: argparse.Namespace) -> tuple[str, Any, list[Any], Any, dict[str, Any]]:
    """What ``args`` name (resolved as `stitch run` resolves them): a title,
    the model, its forwards, the config and how torch.compile is called."""
    from stitch.runtime.check import Forward

    choice = resolve_model(args, sizes=DEFAULT_SIZES)
    args.sizes = [call.size for call in choice.calls]
    config = choice.config(
        backend=args.backend,
        cache_dir=args.cache_dir,
        debug_dump_path=args.dump,
        compile_sizes=list(args.compile_sizes),
        compile_ranges_split_points=list(args.split_points),
        stitching_source=args.source,
    )
    forwards = [Forward(c.size, c.args, c.kwargs) for c in choice.calls]
    title = f"stitch check {choice.flag}: {choice.description}"
    return title, choice.model, forwards, config, dict(choice.compile_options)
