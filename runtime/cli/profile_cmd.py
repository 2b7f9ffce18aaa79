"""``stitch profile``: its arguments, and the handler that times each piece (``profile_job``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .model_choice import add_model_choice
from .options import add_model_options, add_source_option

SIZES = [1, 8, 32]


def add_profile(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="show where each forward's time goes, piece by piece",
        description=(
            "Compile a built-in example (--example), a tiny transformers model "
            "(--hf FAMILY), a checkpoint folder (--model DIR) or your own module "
            "(--module PKG.MOD:FACTORY) with Stitch, running the profiling variant of the "
            "stitching source (every piece call timed and named in torch.profiler "
            "traces; the serving source is unchanged), and print per size the time "
            "per forward of each compiled piece and splitting op, the stitching "
            "itself, and Dynamo's guards and frame, with their shares."
        ),
    )
    add_model_choice(parser)
    add_model_options(parser, SIZES)
    add_source_option(parser)
    parser.add_argument(
        "--decode",
        action="store_true",
        help="--hf, --model: profile greedy decode steps with a static KV cache (--sizes "
        "are then batch sizes; each prefills a 16-token prompt first)",
    )
    parser.add_argument(
        "--iters", type=int, default=20, help="forwards timed per size (default: 20)"
    )
    parser.add_argument(
        "--html", default="", metavar="FILE", help="write a bar chart page to FILE"
    )
    parser.add_argument(
        "--trace",
        default="",
        metavar="FILE",
        help="write a torch.profiler Chrome trace of one forward per size to FILE",
    )
    parser.set_defaults(handler=run_profile)


def run_profile(args: argparse.Namespace) -> int:
    from .model_choice import resolve_model
    from .profile_job import run_profile as job

    if args.iters < 1:
        print("stitch profile: error: --iters must be >= 1", file=sys.stderr)
        return 2
    if args.decode and not (args.hf or args.model):
        print(
            "stitch profile: error: --decode applies to --hf and --model",
            file=sys.stderr,
        )
        return 2
    return job(
        resolve_model(args, sizes=SIZES),
        sizes=args.sizes or SIZES,
        iters=args.iters,
        backend=args.backend,
        cache_dir=args.cache_dir,
        html_path=args.html,
        trace_path=args.trace,
        out=sys.stdout,
        decode=args.decode,
        source=args.source,
    )
