"""The phases of a model's load, from several threads, as one table.

A load overlaps its phases (NOTE: [the order of a model's load] in
``__init__.py``): each phase is kept with its start and end, so the table
shows what ran beside what, and a phase's seconds are its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    start: float  # time.perf_counter()
    end: float
    # The seconds it ran: end - start, less the gaps between its spans.
    busy: float


class Timeline:
    """Phases recorded from any thread; times are counted from ``origin``
    (``time.perf_counter()``; default: the timeline's creation)."""

    def __init__(self, origin: float | None = None) -> None:
        self.origin = time.perf_counter() if origin is None else origin
        self._phases: list[Phase] = []
        self._lock = threading.Lock()

    def record(
        self, name: str, start: float, end: float, busy: float | None = None
    ) -> None:
        """The phase ``name`` ran from ``start`` to ``end`` (``busy`` seconds of
        it; default all)."""
        busy = end - start if busy is None else busy
        with self._lock:
            self._phases.append(Phase(name, start, end, busy))

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the ``with`` block as the phase ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, start, time.perf_counter())

    @property
    def phases(self) -> list[Phase]:
        """The phases by their start; a phase recorded in several spans is one,
        from its first start to its last end."""
        with self._lock:
            spans = list(self._phases)
        merged: dict[str, Phase] = {}
        for p in spans:
            was = merged.get(p.name)
            merged[p.name] = p if was is None else dataclasses.replace(
                was, start=min(was.start, p.start), end=max(was.end, p.end),
                busy=was.busy + p.busy,
            )  # fmt: skip
        return sorted(merged.values(), key=lambda p: p.start)

    def seconds(self, name: str) -> float:
        """The seconds the phase ``name`` ran (0.0 when it did not)."""
        return sum(p.busy for p in self.phases if p.name == name)

    def table(self, expected: tuple[str, ...] = ()) -> str:
        """The Markdown table of the phases by their start: first start, last
        end (from the origin) and the seconds they ran; each of ``expected``
        that did not run is listed last, as ``not run``."""
        from stitch.runtime.tables import markdown_table

        phases = self.phases
        rows = [
            (p.name, f"{p.start - self.origin:.3f}", f"{p.end - self.origin:.3f}")
            + (f"{p.busy:.3f}",)
            for p in phases
        ]
        ran = {p.name for p in phases}
        rows += [(name, "", "", "not run") for name in expected if name not in ran]
        return markdown_table(("phase", "start s", "end s", "seconds"), rows, "lrrr")
