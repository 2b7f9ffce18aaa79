"""``stitch emit``: print the stitching source a compile of the chosen model runs.

NOTE: [emit shows what a compile runs]
The model is named as ``stitch run`` names it (NOTE: [one resolution of the
model choice] in ``model_choice.py``) and compiled as a user compiles it:
``torch.compile(model, backend=StitchBackend(...))`` on Dynamo's graph, one
forward.  The source printed is each graph's ``CompiledModel.code``, the text
its cache entry holds as ``execution_fn.py``, so it carries the readable names
a real compile gets (module paths, ``num_tokens``).  The pieces run on the
``eager`` piece backend in a temporary cache: the source does not depend on
the piece compiler, and no Inductor compile is waited for.  Only a built-in
example that is not a llama-like decoder (``bare_attention``) has no forward
to compile: it is traced with ``make_fx`` and split, as its golden pins.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .model_choice import add_model_choice, check_flags, resolve_model
from .options import add_model_shape_options

if TYPE_CHECKING:
    from .model_choice import ModelChoice

# The tokens of the one forward compiled (the sequence length for --hf and
# --model): not 1, which Dynamo would make a graph of its own.
EMIT_SIZE = 8


def add_emit(subparsers: Any) -> None:
    from stitch.runtime.examples import EXAMPLES

    parser = subparsers.add_parser(
        "emit",
        help="print the stitching source a compile of a model runs",
        description=(
            "Compile a model with torch.compile(backend=StitchBackend(...)) for "
            f"one forward of {EMIT_SIZE} tokens (the sequence length for --hf "
            "and --model), with the pieces run eagerly, and print the stitching "
            "source the compile runs: the text its cache entry holds as "
            "execution_fn.py, a module defining execution_fn(<graph inputs>, *, "
            "__vllm_dispatch__ or __vllm_submods__), which calls the compiled "
            "pieces and runs the splitting (attention) pieces in between.  "
            "Parameters are named after the model's module paths, sizes after "
            "the inputs they measure (num_tokens); the header maps each name "
            "back.  Constants are read as __vllm_consts__[j]; their values are "
            "not part of the source.  A model whose forward Dynamo breaks into "
            "several graphs prints each graph's source after a comment line "
            "that numbers it; -o FILE then writes FILE_1.py, FILE_2.py, ... "
            "(FILE without its .py), in the order Dynamo compiled the graphs.  "
            "The example bare_attention, not a llama-like decoder, is traced "
            "with make_fx and split instead."
        ),
    )
    add_model_choice(parser, examples=sorted(EXAMPLES))
    add_model_shape_options(parser)
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the source to FILE instead of standard output ('-' for stdout)",
    )
    parser.set_defaults(handler=run_emit, sizes=None)
    parser.help_appendix = examples_listing


def examples_listing() -> str:
    """``built-in examples:`` followed by one ``name  description`` line each."""
    from stitch.runtime.examples import EXAMPLES

    width = max((len(name) for name in EXAMPLES), default=0)
    lines = ["built-in examples:"]
    for name in sorted(EXAMPLES):
        lines += textwrap.wrap(
            EXAMPLES[name].description,
            width=79,
            initial_indent=f"  {name:<{width}}  ",
            subsequent_indent=" " * (width + 4),
        )
    return "\n".join(lines) + "\n"


def run_emit(args: argparse.Namespace) -> int:
    sources, what = emitted_sources(args)
    if args.output in (None, "-"):
        sys.stdout.write(joined(sources))
        return 0
    paths = output_paths(args.output, len(sources))
    for path, code in zip(paths, sources, strict=True):
        try:
            path.write_text(code, encoding="utf-8")
        except OSError as exc:
            print(
                f"stitch emit: error: cannot write {path}: {exc.strerror}",
                file=sys.stderr,
            )
            return 1
        print(
            f"wrote the stitching source of {what} to {path} "
            f"({code.count(chr(10))} lines)",
            file=sys.stderr,
        )
    return 0


def emitted_sources(args: argparse.Namespace) -> tuple[list[str], str]:
    """The source of each graph the model named by ``args`` compiles to, and
    how the command line named the model."""
    from stitch.runtime.examples.models import EXAMPLES, runnable_examples

    if args.example and args.example not in runnable_examples():
        check_flags(args)
        if args.layers is not None:
            from stitch.core.errors import StitchConfigError

            raise StitchConfigError(
                f"--layers {args.layers} applies to the llama-like examples, not "
                f"to {args.example!r}"
            )
        from stitch.codegen import generate_execution_code

        split_gm = EXAMPLES[args.example].split_graph_module()
        return [generate_execution_code(split_gm)[0]], f"--example {args.example}"
    choice = resolve_model(args, sizes=[EMIT_SIZE])
    return compiled_sources(choice), choice.flag


def compiled_sources(choice: ModelChoice) -> list[str]:
    """NOTE: [emit shows what a compile runs]: each graph's source, in the
    order Dynamo compiled them, after one forward of ``choice.calls[0]``."""
    import torch

    from stitch.core.errors import StitchModelError

    from ..pipeline.api import StitchBackend

    with tempfile.TemporaryDirectory(prefix="stitch-emit-") as cache_dir:
        backend = StitchBackend(
            choice.config(tiered_start=False, backend="eager", cache_dir=cache_dir)
        )
        with torch.no_grad():
            choice.compiled(choice.compile(backend), choice.calls[0])
    if not backend.compiled:
        raise StitchModelError(
            f"{choice.flag}: Dynamo compiled no graph of "
            f"{type(choice.model).__name__} (nothing in its forward to compile)"
        )
    return [result.code for result in backend.compiled]


def joined(sources: list[str]) -> str:
    """One source as it is; several, each after a comment line naming it."""
    if len(sources) == 1:
        return sources[0]
    return "\n".join(
        f"# ---- graph {i} of {len(sources)}, in the order Dynamo compiled them ----\n"
        + code
        for i, code in enumerate(sources, 1)
    )


def output_paths(output: str, count: int) -> list[Path]:
    """``output`` for one graph; ``<output without .py>_<i>.py`` for several."""
    path = Path(output)
    if count == 1:
        return [path]
    stem = path.name.removesuffix(".py")
    return [path.with_name(f"{stem}_{i}.py") for i in range(1, count + 1)]
