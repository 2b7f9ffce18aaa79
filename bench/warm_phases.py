"""The phases of one process of bench/gpu_warm_start.py, timed from its start, and its profiles.

A restart of the example llama from its saved weights loads the model
through stitch.runtime.weights (NOTE: [the order of a model's load] there):
the weights' read starts right after ``import torch``, and the phases that
follow run beside it.  Each phase is a row with its start and end, in
seconds from the process's start, so overlapping phases show as such:

``import torch``       the interpreter's start to ``import torch`` done;
``import stitch``      Stitch's runtime, its example models and this benchmark's;
``CUDA context``       on the reader's thread (a CUDA device only);
``meta build``         the model built, its parameters on the meta device, no
                       init; its buffers made on the device by the constructor:
                       the rotary frequencies, and the KV caches, zeroed once
                       (the old restart zeroed them again after the load);
``weight read``        the file read on several threads, straight into the
                       tensors on the CPU, into pinned buffers for a device;
``device copy``        from the pinned buffers, until the device is done;
``model build``        instead of the three above, where no file is read: the
                       cold process's random weights, transformers' Llama's;
``saved forward load`` ``aot_compile`` loading the saved forward (it reads the
                       model's structure only, so it runs beside the read;
                       ``compile and save`` where it compiled instead);
``weights wait``       what is left of the read after the load;
``graphs captured``    the startup sizes' CUDA graphs (the dummy forwards on CPU);
``first token``        one decode step of one token, synchronized.

Imported by the child processes after ``import torch`` (bench/ on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

PHASES = (
    "import torch",
    "import stitch",
    "CUDA context",
    "meta build",
    "weight read",
    "device copy",
    "saved forward load",
    "weights wait",
    "graphs captured",
    "first token",
)


class WarmPhases:
    """A process's phases; a restart of the example llama from ``spec``'s
    weights file starts reading it here (:attr:`reader`)."""

    def __init__(self, spec: dict[str, Any], started: float, imported: float) -> None:
        from stitch.runtime.weights import Timeline, start_reading

        self.timeline = Timeline(started)
        self.timeline.record("import torch", started, imported)
        weights = spec.get("weights", "")
        self.reader = None
        if weights and os.path.exists(weights) and not spec.get("hf"):
            self.reader = start_reading(
                [weights], spec["device"], timeline=self.timeline
            )

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with self.timeline.phase(name):
            yield

    def rows(self) -> list[tuple[str, float, float, float]]:
        """(phase, start, end, seconds it ran), from the process's start."""
        origin = self.timeline.origin
        return [
            (p.name, p.start - origin, p.end - origin, p.busy)
            for p in self.timeline.phases
        ]


def phase_table(rows: list[list[Any]]) -> str:
    """The Markdown table of a process's :meth:`WarmPhases.rows` (read back
    from its JSON report); the phases that did not run are listed last."""
    from stitch.runtime.weights import Timeline

    timeline = Timeline(origin=0.0)
    for name, start, end, busy in rows:
        timeline.record(name, start, end, busy)
    return timeline.table(PHASES)


def profiling(spec: dict[str, Any], suffix: str) -> Any:
    """A cProfile profiler, enabled, where ``spec`` asks for a profile (its
    file: ``spec["profile"] + suffix``, written by :func:`dump_profile`)."""
    if not spec.get("profile"):
        return None
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def dump_profile(profiler: Any, spec: dict[str, Any], suffix: str) -> None:
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(spec["profile"] + suffix)


def write_profile_summary(path: str) -> None:
    """``path``.txt: the profile's top 40 by cumulative time and top 25 by own time."""
    import pstats

    with open(path + ".txt", "w", encoding="utf-8") as f:
        stats = pstats.Stats(path, stream=f)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
