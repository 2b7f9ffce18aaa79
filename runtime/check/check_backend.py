"""The backend the check compiles with: Stitch's, whose every graph can run three
ways (NOTE: [three runs of one forward], recorder.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch.fx as fx

from ..loader import compile_execution_fn, source_filename
from ..pipeline.api import CompiledModel, StitchBackend, mutates
from ..pipeline.tiered.controls import unset_outputs
from .recorder import PieceKey, Recorder


class CheckBackend(StitchBackend):
    """:class:`StitchBackend`, compiling exactly as it does for serving, but
    returning for each graph a :class:`CheckedGraph`: the served function, or
    the same stitching source run on uncompiled or on checked pieces, as the
    ``recorder``'s mode says."""

    def __init__(self, config: Any, recorder: Recorder, **collaborators: Any) -> None:
        super().__init__(config, **collaborators)
        self.recorder = recorder
        self.graphs: list[CheckedGraph] = []

    def __call__(self, gm: fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        served = super().__call__(gm, example_inputs)
        graph = CheckedGraph(
            len(self.graphs),
            self.compiled[-1],
            served,
            self.recorder,
            edited=self.config.compile.stitching_source,
        )
        self.graphs.append(graph)
        bind = getattr(self.cudagraphs, "bind", None)
        if bind is not None:
            bind(served, graph)
        return graph


class CheckedGraph:
    """One compiled graph, run the way its recorder's mode says."""

    def __init__(
        self,
        index: int,
        compiled: CompiledModel,
        served: Callable[..., Any],
        recorder: Recorder,
        *,
        edited: str = "",
    ) -> None:
        self.index = index
        self.compiled = compiled
        self.served = served
        self.recorder = recorder
        # The pieces' uncompiled GraphModules: the split graph's submodules
        # (NOTE: [pieces are installed after the loop], compilation.py, shadows
        # them with the compiled backends in the instance dict only).
        self.uncompiled: dict[str, fx.GraphModule] = {
            name: compiled.split_gm._modules[name] for name in compiled.backends
        }
        self.unset = {name: unset_outputs(g) for name, g in self.uncompiled.items()}
        self.writes = {name: mutates(g) for name, g in self.uncompiled.items()}
        # The stitching source every run of the check binds: the edited file
        # the served function runs, where one is configured (the serving
        # function's load checked its contract), else the emitted source.
        self.code, self.edited = compiled.code, ""
        if edited:
            self.edited = os.path.abspath(os.path.expanduser(edited))
            with open(self.edited, encoding="utf-8") as f:
                self.code = f.read()
        self.source_file = self.edited or served_file(served, compiled.code)
        self._functions: dict[str, Callable[..., Any]] = {}

    def key(self, name: str) -> PieceKey:
        return (self.index, name)

    def __call__(self, *args: Any) -> Any:
        mode = self.recorder.mode
        if mode in ("serve", "replay"):
            return self.served(*args)
        fn = self._functions.get(mode)
        if fn is None:
            fn = self._functions[mode] = self._function(mode)
        return fn(*args)

    def _function(self, mode: str) -> Callable[..., Any]:
        """The graph's stitching source bound to pieces that record (reference)
        or check (check) each call."""
        compiled = self.compiled
        piece = ReferencePiece if mode == "reference" else CheckedPiece
        pieces = {name: piece(self, name) for name in compiled.backends}
        filename = self.source_file if os.path.isfile(self.source_file) else None
        return compile_execution_fn(
            self.code,
            pieces,
            compiled.submod_names,
            compiled.consts,
            filename=filename,
        )


class ReferencePiece:
    """A piece as its uncompiled GraphModule, its inputs kept at each call."""

    def __init__(self, graph: CheckedGraph, name: str) -> None:
        self.key = graph.key(name)
        self.recorder = graph.recorder
        self.uncompiled = graph.uncompiled[name]

    def __call__(self, *args: Any) -> Any:
        self.recorder.enter(self.key, args)
        return self.uncompiled(*args)


class CheckedPiece:
    """A compiled piece, each call compared with its uncompiled GraphModule."""

    def __init__(self, graph: CheckedGraph, name: str) -> None:
        self.key = graph.key(name)
        self.recorder = graph.recorder
        self.served = graph.compiled.backends[name]
        self.uncompiled = graph.uncompiled[name]
        self.skip = graph.unset[name]
        self.writes = graph.writes[name]

    def __call__(self, *args: Any) -> Any:
        recorder = self.recorder
        recorder.enter(self.key, args)
        return recorder.compare(
            self.key, args, self.served, self.uncompiled, self.skip, self.writes
        )


def served_file(served: Any, code: str) -> str:
    """The file the served function's stitching source runs from: the cache's
    ``execution_fn.py``, the debug dump's, or the loader's content-named file."""
    for fn in (served, getattr(getattr(served, "graphs", None), "plain", None)):
        filename = getattr(getattr(fn, "__code__", None), "co_filename", None)
        if isinstance(filename, str) and os.path.isfile(filename):
            return filename
    return source_filename(code)
