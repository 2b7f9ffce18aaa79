"""``stitch profile``: its arguments, and the handler that times each piece (``profile_job``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .options import HF_FAMILIES, add_model_options


def add_profile(subparsers: Any) -> None:
    from stitch.runtime.examples.models import runnable_examples

    parser = subparsers.add_parser(
        "profile",
        help="show where each forward's time goes, piece by piece",
        description=(
            "Compile a built-in example (--example) or a tiny transformers model "
            "(--hf FAMILY) with Stitch, running the profiling variant of the "
            "stitching source (every piece call timed and named in torch.profiler "
            "traces; the serving source is unchanged), and print per size the time "
            "per forward of each compiled piece and splitting op, the stitching "
            "itself, and Dynamo's guards and frame, with their shares."
        ),
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--example",
        "-e",
        metavar="NAME",
        choices=sorted(runnable_examples()),
        help="built-in example model",
    )
    model.add_argument(
        "--hf",
        metavar="FAMILY",
        choices=HF_FAMILIES,
        help="a tiny transformers model of this family (--sizes are sequence "
        "lengths of a batch of --batch)",
    )
    add_model_options(parser, [1, 8, 32])
    parser.add_argument(
        "--decode",
        action="store_true",
        help="--hf: profile greedy decode steps with a static KV cache (--sizes "
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
    from .profile_job import run_profile as job

    if args.iters < 1:
        print("stitch profile: error: --iters must be >= 1", file=sys.stderr)
        return 2
    if args.decode and not args.hf:
        print("stitch profile: error: --decode applies to --hf", file=sys.stderr)
        return 2
    return job(
        example=args.example,
        hf=args.hf,
        sizes=args.sizes,
        iters=args.iters,
        layers=args.layers,
        backend=args.backend,
        batch=args.batch,
        attn=args.attn,
        cache_dir=args.cache_dir,
        html_path=args.html,
        trace_path=args.trace,
        out=sys.stdout,
        decode=args.decode,
    )
