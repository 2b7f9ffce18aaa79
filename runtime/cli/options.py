"""The options ``stitch run`` and ``stitch profile`` share (after the model)."""

from __future__ import annotations

import argparse
from typing import Any

# The families of stitch.runtime.hf.tiny_models.FAMILIES, listed here so that the
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


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of ints"
        ) from None


def add_model_shape_options(parser: Any) -> None:
    """``--batch``, ``--attn`` and ``--layers``: the model a choice builds
    (``stitch emit`` takes these alone)."""
    _add_batch_and_attn(parser)
    _add_layers(parser)


def _add_batch_and_attn(parser: Any) -> None:
    parser.add_argument(
        "--batch",
        type=int,
        default=2,
        help="--hf, --model: sequences per forward (default: 2)",
    )
    parser.add_argument(
        "--attn",
        choices=("default", "sdpa", "eager", "stitch"),
        default="default",
        help="--hf, --model: attn_implementation: the model's default (SDPA where the "
        "model supports it), SDPA, transformers' eager attention, or Stitch's op "
        "(SDPA and Stitch's op split with the default config; eager does not)",
    )


def _add_layers(parser: Any) -> None:
    parser.add_argument(
        "--layers",
        type=int,
        default=None,
        help="number of decoder layers (default: the example's; 2 for --hf)",
    )


def add_model_options(parser: Any, sizes: list[int]) -> None:
    """The options ``stitch run`` and ``stitch profile`` share (after the model)."""
    # In this order: `stitch run` prints the `stitch check` command of a
    # failed run in it (run_cmd.check_command).
    _add_batch_and_attn(parser)
    parser.add_argument(
        "--backend",
        choices=("inductor", "eager"),
        default="inductor",
        help="piece compiler (default: inductor)",
    )
    _add_layers(parser)
    # None, not the default list: a factory's one fixed forward (--module)
    # refuses sizes given, not the default ones.
    parser.add_argument(
        "--sizes",
        type=int_list,
        default=None,
        metavar="N,N,...",
        help=f"sizes to run (default: {','.join(map(str, sizes))})",
    )
    parser.add_argument(
        "--cache-dir",
        default="",
        metavar="DIR",
        help="cache root (default: $STITCH_CACHE_DIR or ~/.cache/stitch)",
    )


def add_source_option(parser: Any) -> None:
    """``--source``: an edited stitching file run in place of the emitted one
    (``stitch run``, ``check`` and ``profile``)."""
    parser.add_argument(
        "--source",
        default="",
        metavar="PATH",
        help="run this edited stitching file (from 'stitch emit', or a cache's "
        "execution_fn.py) in place of the emitted source, checked against it "
        "first; the pieces and the cache stay as a compile makes them",
    )


def add_compile_options(parser: Any) -> None:
    """``--compile-sizes``, ``--split-points``, ``--dump`` and ``--source``: what
    ``stitch run`` and ``stitch check`` compile under (one definition, so that
    the command a failed run prints is one the check takes)."""
    add_source_option(parser)
    for flag, what in (
        ("--compile-sizes", "sizes compiled with static shapes (default: none)"),
        ("--split-points", "compile range split points (default: none)"),
    ):
        parser.add_argument(
            flag, type=int_list, default=[], metavar="N,N,...", help=what
        )
    parser.add_argument(
        "--dump",
        default="",
        metavar="DIR",
        help="write a debug dump to this folder (default: none)",
    )
