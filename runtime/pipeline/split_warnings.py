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
one.  A graph that none of the entries splits at all is reported once per
backend: a warning when it holds attention modules (NOTE: [nothing to split
where there is attention]), an INFO line otherwise.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import torch.fx as fx

from stitch.codegen.matching import OpMatcher
from stitch.codegen.pieces import normalize_module_path

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
            report_unsplit(gm, self.graphs, [e.label for e in matcher.entries])
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


# NOTE: [nothing to split where there is attention]
# A graph no splitting op matched compiles as one piece, its attention
# compiled into it: not what a user of a piecewise compiler expects, and not
# visible in the numbers.  So when the nodes' ``nn_module_stack`` shows
# attention modules (a class whose name holds "Attention": transformers',
# torch's ``nn.MultiheadAttention``, a model's own) the report is a warning
# naming them and what Stitch would need: the attention run as one op that
# splitting_ops names.  A graph with no attention module (an MLP, the
# prologue before a graph break) has nothing Stitch would split at: INFO.
#
# A transformers attention module whose forward is defined in a modeling
# module that dispatches through transformers' ``ALL_ATTENTION_FUNCTIONS``
# can run Stitch's op instead (attn_implementation="stitch"): Gemma 2 and
# GPT-OSS, whose default is their eager attention (SDPA lacks their
# softcapping or sinks); the warning says so.  One that does not (Bloom's
# ALiBi attention, Falcon's) cannot: stitch.runtime.hf refuses "stitch" for
# such a model (NOTE: [models whose attention "stitch" cannot serve] in
# runtime/hf/registration.py), and the warning says that too.  Everything is
# read from ``sys.modules``: the core never imports transformers.

# Attention modules named in the warning; the others are counted.
SHOWN_MODULES = 3


def is_attention(name: str) -> bool:
    """Whether a module class name reads as attention (``BloomAttention``,
    ``BertSelfAttention``, ``MultiheadAttention``)."""
    return "Attention" in name


def dispatches_through_transformers(cls: Any) -> bool:
    """Whether ``cls``'s forward is defined in a module that dispatches attention
    through transformers' ``ALL_ATTENTION_FUNCTIONS`` (a subclass that keeps its
    base's forward is judged by the base's module)."""
    for klass in getattr(cls, "__mro__", ()):
        if "forward" in vars(klass):
            module = sys.modules.get(klass.__module__)
            return hasattr(module, "ALL_ATTENTION_FUNCTIONS")
    return False


def report_unsplit(gm: fx.GraphModule, graph: int, labels: list[str]) -> None:
    """Log that no splitting op matched ``gm`` (graph ``graph`` of its backend)."""
    found = transformers_attention(gm)
    if found is not None:
        log.warning("%s", unsplit_transformers_message(*found, graph))
        return
    modules = attention_modules(gm)
    if modules:
        log.warning("%s", unsplit_attention_message(modules, graph, labels))
        return
    log.info(
        "stitch: no splitting op matched graph %d; it compiles as one piece "
        "(splitting_ops=%s)",
        graph,
        labels,
    )


def attention_modules(gm: fx.GraphModule) -> list[tuple[str, Any]]:
    """(path, class) of the attention modules ``gm``'s nodes ran in, in graph order;
    of nested ones (BERT's ``BertAttention`` around ``BertSelfAttention``) the innermost.
    """
    found: dict[str, Any] = {}
    for node in gm.graph.nodes:
        for path, cls in (node.meta.get("nn_module_stack") or {}).values():
            if is_attention(_class_name(cls)):
                found.setdefault(path, cls)
    return [
        (path, cls)
        for path, cls in found.items()
        if not any(other.startswith(path + ".") for other in found)
    ]


def _class_name(cls: Any) -> str:
    # Dynamo records the class; a string (a qualified name) is read as one too.
    if isinstance(cls, str):
        return cls.rsplit(".", 1)[-1]
    return getattr(cls, "__qualname__", None) or type(cls).__name__


def _is_transformers(cls: Any) -> bool:
    return (getattr(cls, "__module__", "") or "").startswith("transformers.")


def transformers_attention(gm: fx.GraphModule) -> tuple[str, str] | None:
    """(model, attention class) when ``gm`` holds a routable transformers attention."""
    model = attention = None
    for node in gm.graph.nodes:
        for _path, cls in (node.meta.get("nn_module_stack") or {}).values():
            if not _is_transformers(cls):
                continue
            name = _class_name(cls)
            if model is None:
                model = name
            if (
                attention is None
                and is_attention(name)
                and dispatches_through_transformers(cls)
            ):
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


def unsplit_attention_message(
    modules: list[tuple[str, Any]], graph: int, labels: list[str]
) -> str:
    """The warning for a graph with attention modules and no splitting op."""
    shown = ", ".join(
        f"{_short_path(path)} ({_class_name(cls)})"
        for path, cls in modules[:SHOWN_MODULES]
    )
    if len(modules) > SHOWN_MODULES:
        shown += f" and {len(modules) - SHOWN_MODULES} more"
    text = (
        f"graph {graph} holds attention modules ({shown}) but no splitting op "
        f"(splitting_ops={labels}), so it compiles as one piece, its attention "
        "inside. Stitch splits at an attention only where it runs as one op that "
        "splitting_ops names: SDPA (torch.nn.functional.scaled_dot_product_attention, "
        "a default), or an op of your own (torch.library.custom_op) added to "
        "splitting_ops"
    )
    unroutable = list(
        dict.fromkeys(
            _class_name(cls)
            for _path, cls in modules
            if _is_transformers(cls) and not dispatches_through_transformers(cls)
        )
    )
    if unroutable:
        text += (
            f". {', '.join(unroutable)} does not dispatch through transformers' "
            'attention functions, so attn_implementation="stitch" cannot route it '
            "to Stitch's op"
        )
    return text


def _short_path(path: str) -> str:
    # Dynamo's paths start at the compiled module (L['self'], L['fn'], or
    # L['args'][0] under a wrapper: NOTE: [the compiled module under a
    # wrapper] in codegen/pieces.py); the rest is the module's name in
    # model.named_modules().
    return normalize_module_path(path)
