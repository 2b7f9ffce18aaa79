"""Whether running compile workers make a busy serving process wait,
learned in a period in which every one runs throughout (NOTE: [serving
first], serving_first.py)."""

from __future__ import annotations

from collections.abc import Callable

from .proc_family import cpu_s as _cpu_s
from .proc_family import family as _family

# Periods between two measurements of what running workers cost a busy
# process (a forward, in a period with no pause at its start, learns it):
# where they cost it nothing (each measurement costs nothing either), and
# where they make it wait (each makes it wait a period).
LEARN = 20
RELEARN = 100
# The extra delay (core-seconds a second) the workers may cause before they pause.
LIMIT = 0.1


class WorkerCost:
    """Whether running workers make a busy process wait (NOTE: [serving
    first]), learned in a period in which every one runs throughout."""

    def __init__(self, workers: Callable[[], list[int]]) -> None:
        self.harmful = True  # until learned: the serving process comes first
        self.unlearned = RELEARN  # periods since it was last learned: due now
        self._workers = workers
        self._at: dict[int, float] = {}  # at a learning period's start

    def due(self) -> bool:
        return self.unlearned >= (RELEARN if self.harmful else LEARN)

    def begin(self) -> None:
        """A learning period begins: the CPU time of every worker and its
        descendants (a build pool, gcc) now."""
        pids = (q for pid in self._workers() for q in _family(pid))
        self._at = {q: t for q in pids if (t := _cpu_s(q)) is not None}

    def ended(self, excess: float, seconds: float, busy: bool, low: int) -> None:
        """The period that ended (``seconds`` long): the process's run delay
        above others' (core-seconds a second), whether it was busy, and the
        fewest workers that ran."""
        at, self._at = self._at, {}
        if not at or not busy or low == 0:
            self.unlearned += not at
            return  # not a learning period, or nothing learned: again
        used = sum(t - at[q] for q in at if (t := _cpu_s(q)) is not None)
        cost = min(excess, used / max(seconds, 1e-6))
        self.harmful = cost > LIMIT or (self.harmful and cost >= LIMIT / 2)
        self.unlearned = 0
