"""The ``stitch`` console command: one function builds each subcommand's parser.

To add a subcommand, write ``add_<name>(subparsers)`` (in ``<name>_cmd.py``,
beside the others) that registers its parser and sets ``handler`` to a function
``(args) -> exit status``, then list it in ``SUBCOMMANDS``.  Arguments that name a built-in example use
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
from .check_cmd import add_check
from .compile_job import add_compile
from .inspect_cmd import add_inspect
from .profile_cmd import add_profile
from .run_cmd import add_run

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
  stitch check --example llama             which compiled piece changed the numbers

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


# -- the parser ---------------------------------------------------------------------------

SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_emit,
    add_run,
    add_compile,
    add_profile,
    add_check,
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
