"""``stitch run``'s comparison with eager and its report, one for every model choice.

NOTE: [one comparison with eager]
``--example``, ``--hf``, ``--model`` and ``--module`` each come to ``stitch
run`` as a :class:`~.model_choice.ModelChoice`.  The examples compile through
the saved forward (``main_job.run_example``) and the others through
``torch.compile`` (``model_job.run_model``), but both run each of the choice's
calls eagerly and compiled here, hold them to the tolerance of their dtype
(``ModelChoice.agree``), time both, and end with the same table and verdict
(:func:`print_comparison`).
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import torch

from ..store.index import SOURCE_FILE
from ..tables import markdown_table
from .model_choice import ModelChoice

# One row of the timing table: tokens, eager ms, stitch ms, first call ms, the
# largest difference from eager, and whether it is within tolerance.
TimingRow = tuple[int, float, float, float, float, bool]


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def compare_with_eager(
    choice: ModelChoice, compiled: Callable[..., Any], repeats: int
) -> tuple[list[TimingRow], int]:
    """Per call of ``choice``, eager's and ``compiled``'s times and their
    largest difference; and how many calls differ beyond tolerance."""
    rows: list[TimingRow] = []
    failures = 0
    with torch.no_grad():
        for call in choice.calls:
            expected = choice.eager(call)
            start = time.perf_counter()
            actual = choice.compiled(compiled, call)
            first_ms = (time.perf_counter() - start) * 1e3
            err, ok = choice.agree(expected, actual)
            failures += not ok
            eager_ms = median_ms(
                functools.partial(choice.model, *call.args, **call.kwargs), repeats
            )
            stitch_ms = median_ms(
                functools.partial(compiled, *call.args, **call.kwargs), repeats
            )
            rows.append((call.size, eager_ms, stitch_ms, first_ms, err, ok))
    return rows, failures


def timing_table(rows: Sequence[TimingRow]) -> str:
    """Per token count, eager and Stitch times and whether the outputs agree."""
    return markdown_table(
        (
            "tokens",
            "eager ms",
            "stitch ms",
            "speed-up",
            "first call ms",
            "max abs err",
            "ok",
        ),
        [
            (
                n,
                f"{eager_ms:.3f}",
                f"{stitch_ms:.3f}",
                f"{eager_ms / stitch_ms:.2f}x",
                f"{first_ms:.1f}",
                f"{err:.2e}",
                "yes" if ok else "NO",
            )
            for n, eager_ms, stitch_ms, first_ms, err, ok in rows
        ],
        align="rrrrrrl",
    )


def print_comparison(rows: Sequence[TimingRow], failures: int, out: TextIO) -> int:
    """The report's end, the same for every model: the table, then how many
    sizes differ; the command's exit status (1 where any does)."""
    print("", file=out)
    print(timing_table(rows), file=out)
    if failures:
        print(f"\n{failures} size(s) differ from eager beyond tolerance", file=out)
        return 1
    return 0


def print_paths(cache_entry: str | None, edited: str, out: TextIO) -> None:
    """Where the emitted source and its cache entry are, and the edited
    stitching file that ran in its place (``--source``), if any."""
    if cache_entry:
        print(f"  emitted source: {os.path.join(cache_entry, SOURCE_FILE)}", file=out)
        print(f"  cache: {cache_entry}", file=out)
    if edited:
        print(f"  ran in its place: {os.path.abspath(edited)} (--source)", file=out)
