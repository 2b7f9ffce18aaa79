"""Saying when a splitting op matched nothing (one warning per entry and backend).

NOTE: [unmatched splitting ops warn once]
An entry of ``splitting_ops`` that matches no node of a graph is almost always
a mistake (a typo such as ``"stitch::atention"``, a function Dynamo inlined, an
op the model does not use), and silently compiling the graph as one piece
hides it.  So each such entry gets one warning per backend object, naming it
and the close names the graph does call.  A model with graph breaks hands one
backend several graphs; the warning comes with the first graph the entry is
absent from and is not repeated for the others (a graph holding no attention,
such as the prologue before a graph break, can trigger it; the message says so).

The default entries (``DEFAULT_SPLITTING_OPS``) are the attention of different
kinds of model, so most models miss all but one of them: they never warn one by
one.  A graph that none of the entries splits at all logs one INFO line.
"""

from __future__ import annotations

import logging
from typing import Any

import torch.fx as fx

from stitch.codegen.matching import OpMatcher

from ..config import DEFAULT_SPLITTING_OPS

log = logging.getLogger("stitch")


class SplittingOpWarnings:
    """Per backend: which entries were reported, and how many graphs were seen."""

    def __init__(self) -> None:
        self.warned: set[str] = set()
        self.reported_unsplit = False
        self.graphs = 0

    def check(self, gm: fx.GraphModule, matcher: OpMatcher) -> None:
        """Warn for entries of ``matcher`` that match no node of ``gm``."""
        self.graphs += 1
        unmatched = matcher.unmatched(gm)
        if len(unmatched) == len(matcher.entries) and not self.reported_unsplit:
            self.reported_unsplit = True
            log.info(
                "stitch: no splitting op matched graph %d; it compiles as one piece "
                "(splitting_ops=%s)",
                self.graphs,
                [e.label for e in matcher.entries],
            )
        for entry, close in unmatched:
            if entry.label in DEFAULT_SPLITTING_OPS or entry.label in self.warned:
                continue
            self.warned.add(entry.label)
            log.warning("%s", unmatched_message(entry, close, self.graphs))


def unmatched_message(entry: Any, close: list[str], graph: int) -> str:
    """The warning for one entry that matched nothing."""
    text = (
        f"splitting op {entry.label!r} matched no node of graph {graph} compiled by "
        "this backend, so nothing is split there"
    )
    if close:
        text += f"; the graph calls {', '.join(repr(c) for c in close)}"
    if entry.kind in ("callable", "dotted") and close == []:
        text += (
            "; Dynamo inlines Python functions, so a function of your own appears "
            "in the graph only when wrapped with torch.library.custom_op or "
            "torch.compiler.allow_in_graph"
        )
    if graph > 1:
        text += " (if another graph of the model holds it, this one may just lack it)"
    return text
