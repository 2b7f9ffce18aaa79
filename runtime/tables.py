"""Markdown tables: every table Stitch and its benchmarks print, laid out by tabulate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from stitch.core.errors import StitchConfigError

__all__ = ["markdown_table"]

_ALIGN = {"l": "left", "r": "right", "c": "center"}


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str = ""
) -> str:
    """A Markdown (pipe) table of ``rows`` under ``headers``.

    ``align`` has one letter per column, ``l``, ``r`` or ``c`` (numbers are
    usually ``r``); missing letters mean ``l``.  Cells are printed as given:
    format numbers before (``f"{ms:.3f}"``) to choose their precision.
    """
    # NOTE: [tabulate on first use]
    # Imported here, not at the top: the modules that print tables are also
    # imported by a warm start, which prints none.
    from tabulate import tabulate

    unknown = sorted(set(align) - set(_ALIGN))
    if unknown or len(align) > len(headers):
        raise StitchConfigError(
            f"markdown_table align={align!r}: expected at most {len(headers)} "
            f"letters (one per column) from 'l', 'r', 'c'"
        )
    colalign = [_ALIGN[a] for a in align.ljust(len(headers), "l")]
    # NOTE: [pipe tables]
    # "pipe" (not "github") writes the alignment into the rule (---:), so the
    # numbers stay right-aligned where the Markdown is rendered;
    # disable_numparse keeps each cell's text (tabulate would reformat "1.50").
    return tabulate(
        [list(r) for r in rows],
        headers=list(headers),
        tablefmt="pipe",
        colalign=colalign,
        disable_numparse=True,
    )
