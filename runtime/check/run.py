"""``check_model``: compile a model as serving does, then name the piece that
changed the numbers (NOTE: [three runs of one forward], recorder.py)."""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..compat.pytree import tree_leaves, tree_map
from ..compat.trace import phase
from ..config import CompilationConfig
from ..cudagraph.wrapper import call_order
from .check_backend import CheckBackend, CheckedGraph
from .compare import measure, tolerance
from .graphs import CheckGraphManager, replays
from .passes import find_pass, served_static
from .recorder import Recorder
from .report import CheckReport, ForwardResult, PieceResult
from .source_lines import piece_lines

log = logging.getLogger("stitch")


@dataclasses.dataclass(frozen=True)
class Forward:
    """One forward the check runs: its inputs, and the size the report gives it."""

    size: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


class Checker:
    """The check's backend, and the runs that fill its report.

    ``config`` is the serving config, used as it is but for a tiered start
    (every piece must be compiled to be checked); ``graph_ops`` are the CUDA
    graph ops (CPU emulation: ``EmulatedGraphOps()``; default: CUDA's).
    """

    def __init__(self, config: CompilationConfig, *, graph_ops: Any = None) -> None:
        self.config = dataclasses.replace(config, tiered_start=False)
        self.recorder = Recorder()
        manager = CheckGraphManager(
            self.config.cudagraphs, self.recorder, ops=graph_ops
        )
        self.backend = CheckBackend(self.config, self.recorder, cudagraphs=manager)

    def run(
        self,
        model: Callable[..., Any],
        compiled: Callable[..., Any],
        forwards: Sequence[Forward],
    ) -> CheckReport:
        """Run ``forwards`` through ``model`` eagerly and through ``compiled``
        (``model`` under ``torch.compile`` with :attr:`backend`), and report."""
        state = ModelState(model, forwards)
        with torch.no_grad():
            results = [self._forward(model, compiled, f, state) for f in forwards]
            state.restore()
            self.recorder.start("serve", None)
            pieces = [
                row
                for graph in self.backend.graphs
                for row in graph_rows(graph, self.recorder)
            ]
            report = CheckReport(
                pieces, results, list(self.recorder.notes), self._edits()
            )
            # NOTE: [the search runs without grad]
            # The forwards ran under no_grad, so Inductor compiled each piece
            # as an inference graph.  With grad on, the search's compiles would
            # be of a training graph: a forward partitioned for a backward,
            # and that backward's kernels too, about twice the work for a
            # piece that is not the one served.
            with phase("stitch_check_pass_search"):
                self._search_passes(report)
        return report

    def _forward(
        self,
        model: Callable[..., Any],
        compiled: Callable[..., Any],
        forward: Forward,
        state: ModelState,
    ) -> ForwardResult:
        def run(
            fn: Callable[..., Any], mode: str, name: str, inputs: Forward = forward
        ) -> list[Any]:
            state.ready()
            self.recorder.start(mode, forward.size)
            with phase(f"stitch_check_{name}"):
                return output_leaves(fn(*inputs.args, **inputs.kwargs))

        eager = run(model, "serve", "eager")
        reference = run(compiled, "reference", "reference")
        checked = run(compiled, "check", "pieces")
        result = ForwardResult(
            forward.size,
            measure(reference, eager, "output"),
            measure(checked, eager, "output"),
        )
        if replays(g.served for g in self.backend.graphs):
            # NOTE: [graphs are captured on other inputs]
            # Warm-up calls and the capture run on the forward's inputs rolled
            # by one row, as a server captures on dummy inputs: a replay that
            # reads what its capture read (an input that moved since) then
            # gives other numbers than a direct call on the forward's inputs.
            rolled = Forward(
                forward.size, *tree_map(_roll, (forward.args, forward.kwargs))
            )
            for _ in range(self.config.cudagraph_num_of_warmups + 1):
                run(compiled, "serve", "capture", rolled)
            replayed = run(compiled, "replay", "replay")
            # Only the served function runs padded to a capture size.
            result.replayed = measure(replayed, eager, "output", padded=True)
        return result

    def _edits(self) -> list[tuple[str, str]]:
        """Each edited stitching file the graphs ran, and where it differs from
        the emitted source (a unified diff)."""
        edits = []
        for graph in self.backend.graphs:
            if graph.edited:
                emitted = graph.compiled.code.splitlines(keepends=True)
                diff = difflib.unified_diff(
                    emitted,
                    graph.code.splitlines(keepends=True),
                    "the emitted source",
                    graph.edited,
                )
                edits.append((graph.edited, "".join(diff)))
        return edits

    def _search_passes(self, report: CheckReport) -> None:
        """Which configured pass makes the difference, for each piece whose
        compiled form differs from its uncompiled one (passes.py)."""
        if not self.config.inductor_passes or self.config.backend != "inductor":
            return
        graphs = {g.index: g for g in self.backend.graphs}
        for row in report.pieces:
            found = self.recorder.findings.get((row.graph, row.name))
            if not row.output.beyond or found is None or found.example is None:
                continue
            graph = graphs[row.graph]
            row.passes = find_pass(
                self.config,
                graph.uncompiled[row.name],
                found.example,
                graph.unset[row.name],
                static=served_static(graph.compiled.backends[row.name], found.example),
            )


def graph_rows(graph: CheckedGraph, recorder: Recorder) -> list[PieceResult]:
    """One row per compiled piece of ``graph``, in the order the graph calls them."""
    compiled = graph.compiled
    lines = piece_lines(graph.code, compiled.submod_names)
    modules = {r.name: r.module_path for r in compiled.reports}
    rows = []
    for name in call_order(compiled.split_gm, compiled.backends):
        found = recorder.found(graph.key(name))
        dtype = found.dtype or torch.float32
        rtol, atol = tolerance(dtype)
        rows.append(
            PieceResult(
                graph=graph.index,
                name=name,
                modules=modules.get(name, ""),
                lines=lines.get(name),
                source_file=graph.source_file,
                calls=found.calls,
                dtype=str(dtype).removeprefix("torch."),
                rtol=rtol,
                atol=atol,
                output=found.output,
                inputs=found.inputs,
                replay=found.replay,
            )
        )
    return rows


def _roll(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() >= 1:
        return torch.roll(value, 1, 0)
    return value


def output_leaves(value: Any) -> list[Any]:
    """The values of a forward's output, tensors copied (under CUDA graphs an
    output lives until the next forward)."""
    to_tuple = getattr(value, "to_tuple", None)  # transformers' ModelOutput
    if callable(to_tuple):
        value = to_tuple()
    return [
        leaf.clone() if isinstance(leaf, torch.Tensor) else leaf
        for leaf in tree_leaves(value)
    ]


class ModelState:
    """The model's buffers and the forwards' input tensors as they were first,
    put back before each run but the first: a run writes KV caches, and a
    piece may write its inputs."""

    def __init__(self, model: Any, forwards: Sequence[Forward]) -> None:
        buffers = list(model.buffers()) if isinstance(model, torch.nn.Module) else []
        leaves = tree_leaves([(f.args, f.kwargs) for f in forwards])
        tensors = {id(t): t for t in [*buffers, *leaves] if isinstance(t, torch.Tensor)}
        self.tensors = list(tensors.values())
        with torch.no_grad():
            self.saved = [t.clone() for t in self.tensors]
        # Whether anything ran since the values were saved or put back.
        self.used = False

    def ready(self) -> None:
        """Before a run: the values as they were first."""
        if self.used:
            self.restore()
        self.used = True

    def restore(self) -> None:
        with torch.no_grad(), phase("stitch_check_restore"):
            for tensor, saved in zip(self.tensors, self.saved, strict=True):
                with torch.inference_mode(tensor.is_inference()):
                    tensor.copy_(saved)
        self.used = False


def check_model(
    model: Callable[..., Any],
    forwards: Sequence[Forward],
    config: CompilationConfig | None = None,
    *,
    dynamic: bool | None = None,
    fullgraph: bool = False,
    graph_ops: Any = None,
) -> CheckReport:
    """Compile ``model`` with Stitch under ``config`` (as ``torch.compile(model,
    backend=StitchBackend(config), dynamic=dynamic)`` does for serving), run
    every forward, and report each compiled piece against its uncompiled
    GraphModule.  Dynamic dims are marked on the forwards' tensors by the
    caller, as for serving."""
    checker = Checker(config or CompilationConfig(), graph_ops=graph_ops)
    compiled = torch.compile(
        model, backend=checker.backend, dynamic=dynamic, fullgraph=fullgraph
    )
    return checker.run(model, compiled, forwards)
