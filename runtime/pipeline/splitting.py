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
one.  A graph that none of the entries splits at all logs one INFO line, or
a warning when it holds a transformers attention module that could be split
(NOTE: [a transformers model with nothing to split]).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import torch.fx as fx

from stitch.codegen.matching import OpMatcher

from ..config import DEFAULT_SPLITTING_OPS

log = logging.getLogger("stitch")


class SplittingOpWarnings:
    """Per backend: which entries were reported, and how many graphs were seen."""

    def __init__(self, quiet: Iterable[str] = ()) -> None:
        # Entries that never warn one by one: Stitch's defaults, and those an
        # integration supplies as its own defaults (vLLM's attention ops).
        self.quiet = set(DEFAULT_SPLITTING_OPS) | set(quiet)
        self.warned: set[str] = set()
        self.reported_unsplit = False
        self.graphs = 0

    def check(self, gm: fx.GraphModule, matcher: OpMatcher) -> None:
        """Warn for entries of ``matcher`` that match no node of ``gm``."""
        self.graphs += 1
        unmatched = matcher.unmatched(gm)
        if len(unmatched) == len(matcher.entries) and not self.reported_unsplit:
            self.reported_unsplit = True
            found = transformers_attention(gm)
            if found is not None:
                log.warning("%s", unsplit_transformers_message(*found, self.graphs))
                return
            log.info(
                "stitch: no splitting op matched graph %d; it compiles as one piece "
                "(splitting_ops=%s)",
                self.graphs,
                [e.label for e in matcher.entries],
            )
        for entry, close in unmatched:
            if entry.label in self.quiet or entry.label in self.warned:
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


# NOTE: [a transformers model with nothing to split]
# A transformers model whose default attention is its eager one (Gemma 2,
# GPT-OSS: SDPA lacks their softcapping or sinks) has no SDPA call to split
# at: the whole graph is one piece, the attention compiled into it, which is
# not what a user of a piecewise compiler expects and cannot be seen in the
# numbers.  Its attention modules are in the nodes' ``nn_module_stack``; one
# defined in a modeling module that dispatches through transformers'
# ``ALL_ATTENTION_FUNCTIONS`` can run Stitch's op instead.  Read from
# ``sys.modules`` only: the core never imports transformers.


def transformers_attention(gm: fx.GraphModule) -> tuple[str, str] | None:
    """(model, attention class) when ``gm`` holds a routable transformers attention."""
    model = attention = None
    for node in gm.graph.nodes:
        for _path, cls in (node.meta.get("nn_module_stack") or {}).values():
            module = getattr(cls, "__module__", "") or ""
            if not module.startswith("transformers."):
                continue
            if model is None:
                model = cls.__qualname__
            name = cls.__qualname__
            routable = hasattr(sys.modules.get(module), "ALL_ATTENTION_FUNCTIONS")
            if attention is None and routable and name.endswith("Attention"):
                attention = name
        if model is not None and attention is not None:
            return model, attention
    return None


def unsplit_transformers_message(model: str, attention: str, graph: int) -> str:
    """The warning for a transformers model whose graph holds no splitting op."""
    return (
        f"graph {graph} of {model} holds transformers attention ({attention}) but no "
        "splitting op, so it compiles as one piece: its attention implementation "
        "is one Stitch does not split at (transformers' eager attention, the "
        "default where SDPA lacks a feature the model needs). Route it through "
        "Stitch's op: call stitch.runtime.hf.register() and build the model with "
        'attn_implementation="stitch"'
    )
