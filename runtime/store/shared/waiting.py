"""What a replica waiting for another's compile shows: one warning, then progress.

NOTE: [a wait is visible by default]
Stitch configures no logging, so unless the application does, Python shows
only warnings (on stderr).  A replica that starts waiting for another's lease
therefore says so in one WARNING: the unit (its cache key), the lease holder,
the store, and how long it waits at most before compiling itself.  Progress
then goes to the progress bar of ``runtime/progress.py`` where stderr is a
terminal or the ``stitch`` logger shows INFO, and to an INFO line every
``PROGRESS_S`` seconds for log files.  The wait ends in a WARNING when it
changes what happens (the lease came free: this process compiles; the wait ran
out: it compiles too), and in an INFO line when the entry is installed.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from ...progress import progress_bar

log = logging.getLogger("stitch")

# An INFO line while waiting, every this many seconds.
PROGRESS_S = 10.0


def show_bar() -> bool:
    """Whether the waiting bar is drawn: stderr is a terminal, or INFO shows."""
    stream = sys.stderr
    tty = stream is not None and hasattr(stream, "isatty") and stream.isatty()
    return bool(tty) or log.isEnabledFor(logging.INFO)


class Wait:
    """One replica's wait for the unit ``unit`` another one is compiling."""

    def __init__(
        self, url: str, unit: str, bound_s: float, serving: bool = False
    ) -> None:
        self.url = url
        # This process serves on uncompiled pieces while it waits (NOTE: [a
        # tiered start]): no bar over its output.
        self.serving = serving
        self.unit = unit
        self.bound_s = bound_s
        self.start = self.last = time.monotonic()
        self.holder: str | None = None
        self._bar: Any = None
        self._shown = 0

    @property
    def waited(self) -> float:
        return time.monotonic() - self.start

    def tick(self, holder: str | None) -> None:
        """The lease is taken (by ``holder``, None: not known): say so the first
        time, then show progress."""
        self.holder = holder or self.holder
        who = self.holder or "another replica"
        if self._bar is None:
            log.warning(
                "stitch cache: %s holds the lease of %s on %s (it is compiling "
                "it); waiting for its entry%s, at most %.0fs (cache_wait_s), then "
                "compiling here",
                who,
                self.unit,
                self.url,
                " while serving on uncompiled pieces" if self.serving else "",
                self.bound_s,
            )
            self._bar = progress_bar(
                round(self.bound_s),
                f"stitch: waiting for {who}",
                "s",
                enabled=show_bar() and not self.serving,
            )
        elif time.monotonic() - self.last >= PROGRESS_S:
            self.last = time.monotonic()
            log.info(
                "stitch cache: %s is compiling %s; waiting (%.0fs of at most %.0fs)",
                who,
                self.unit,
                self.waited,
                self.bound_s,
            )
        now = min(int(self.waited), round(self.bound_s))
        if now > self._shown:
            self._bar.update(now - self._shown)
            self._shown = now

    def end(self, outcome: str) -> None:
        """Close the bar and say how the wait ended: ``installed``, ``lease``
        (the lease came free and is this process's now), ``timeout`` or
        ``down`` (the store stopped answering, said already)."""
        waited_here = self._bar is not None
        if waited_here:
            self._bar.close()
            self._bar = None
        who = self.holder or "another replica"
        if outcome == "installed" and waited_here:
            log.info(
                "stitch cache: installed %s after waiting %.0fs for %s",
                self.unit,
                self.waited,
                who,
            )
        elif outcome == "lease" and waited_here:
            log.warning(
                "stitch cache: the lease of %s came free after %.0fs (%s died or "
                "did not publish); compiling it here",
                self.unit,
                self.waited,
                who,
            )
        elif outcome == "timeout":
            log.warning(
                "stitch cache: waited %.0fs for %s to compile %s; compiling it here",
                self.waited,
                who,
                self.unit,
            )
