"""``stitch check``: its arguments, the model they name, and the report of
:func:`stitch.runtime.check.check_model` (which piece changed the numbers)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from .options import add_model_options, int_list

# The sizes `stitch run` runs by default, so that a check of a run's model
# covers the same forwards.
DEFAULT_SIZES = [1, 3, 8, 17, 32]


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
    from stitch.runtime.examples.models import runnable_examples

    # The same model choice as `stitch run`'s, so that every way of naming a
    # model there names it here too (models run by other engines are refused
    # in run_check).
    from .run_cmd import _add_model_choice

    _add_model_choice(parser, runnable_examples())
    add_model_options(parser, DEFAULT_SIZES)
    parser.add_argument(
        "--compile-sizes",
        type=int_list,
        default=[],
        metavar="N,N,...",
        help="sizes compiled with static shapes (default: none)",
    )
    parser.add_argument(
        "--split-points",
        type=int_list,
        default=[],
        metavar="N,N,...",
        help="compile range split points (default: none)",
    )
    parser.add_argument(
        "--dump",
        default="",
        metavar="DIR",
        help="write a debug dump to this folder (default: none)",
    )


def run_check(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    other = getattr(args, "vllm", None) or getattr(args, "engine", None)
    if other:
        print(
            "stitch check: error: --vllm and --engine run another engine in its own "
            "processes; check the model with --example or --hf",
            file=sys.stderr,
        )
        return 2
    if args.hf and (args.compile_sizes or args.split_points):
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
    print(f"{title}, backend {args.backend}, sizes {_sizes(args.sizes)}", file=out)
    print(
        f"  compiled and checked in {seconds:.2f}s: {len(report.pieces)} compiled "
        f"pieces; emitted source: {', '.join(files) or '-'}",
        file=out,
    )
    print("\n" + report.table() + "\n", file=out)
    print("whole forward against eager:\n\n" + report.forward_table() + "\n", file=out)
    print(report.verdict(), file=out)
    return 0 if report.ok else 1


def _sizes(sizes: list[int]) -> str:
    return ",".join(str(s) for s in sizes)


def _model(args: argparse.Namespace) -> tuple[str, Any, list[Any], Any, dict[str, Any]]:
    """What ``args`` name: a title, the model, its forwards, the config and how
    torch.compile is called, all as `stitch run` has them."""
    from stitch.runtime.check import Forward
    from stitch.runtime.config import CompilationConfig

    if args.hf:
        from stitch.runtime.hf import build_model, example_inputs

        config = CompilationConfig(
            backend=args.backend, cache_dir=args.cache_dir, debug_dump_path=args.dump
        )
        layers = args.layers or 2
        model = build_model(
            args.hf,
            layers=layers,
            attn_implementation=None if args.attn == "default" else args.attn,
        )
        forwards = [
            Forward(n, (), example_inputs(args.hf, args.batch, n, seed=n))
            for n in args.sizes
        ]
        title = f"stitch check --hf {args.hf}: {type(model).__name__}, {layers} layers"
        return title, model, forwards, config, {"dynamic": True}
    from stitch.runtime.compat.dynamo import mark_unbacked
    from stitch.runtime.examples import build_llama, llama_inputs

    from .main_job import example_config, example_llama

    cfg = example_llama(args.example, args.layers, "check")
    for n in args.sizes:
        if not 1 <= n <= cfg.max_seqs:
            raise SystemExit(f"stitch check: size {n} must be in [1, {cfg.max_seqs}]")
    config = example_config(
        cfg,
        cache_dir=args.cache_dir,
        compile_sizes=args.compile_sizes,
        split_points=args.split_points,
        backend=args.backend,
        debug_dump_path=args.dump,
    )
    forwards = []
    for n in args.sizes:
        ids, positions = llama_inputs(cfg, n, seed=n)
        # One graph for every token count, as `stitch run` compiles it.
        mark_unbacked(ids, 0)
        mark_unbacked(positions, 0)
        forwards.append(Forward(n, (ids, positions)))
    title = f"stitch check --example {args.example}: {cfg.num_layers} layers"
    return title, build_llama(cfg), forwards, config, {"fullgraph": True}
