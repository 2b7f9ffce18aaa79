"""The ``stitch`` console command: one function builds each subcommand's parser.

To add a subcommand, write ``add_<name>(subparsers)`` (in ``<name>_cmd.py``,
beside the others) that registers its parser and sets ``handler`` to a function
``(args) -> exit status``, then list it in ``SUBCOMMANDS``.  A command that
names a model takes it as ``stitch run`` does (``model_choice.add_model_choice``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .cache_cmd import add_cache
from .check_cmd import add_check
from .compile_job import add_compile
from .emit_job import add_emit
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


# -- the parser ---------------------------------------------------------------------------

SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (
    add_emit,
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
