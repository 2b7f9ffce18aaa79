"""The compile's share of a busy process's time (NOTE: [the compile's share]).

NOTE: [the compile's share]
Serving first lets forwards go first: the stitching's build gives way to a
forward of Dynamo's graph, and serving first pauses the compile workers in the
tick a forward begins (NOTE: [serving first]).  Under forwards back to back
that left the compile a sixth of the time: on 2 cores the last swap came at
about 190 s where a cold compile took 15 to 20 s, and a transformers Llama
decoding from its first call did 41% less work in 200 s than a cold compile
would have let it do.  Letting the compile and the forwards share the cores
as equals is not enough either: the forwards' two torch threads and the
worker's Python and gcc share two cores, and the last swap came at 1.8x the
cold compile.

So the compile has a share of the time, ``SHARE``, that forwards cannot take:
serving first decides who goes first, the share decides how much the
compile is owed.  Each source of compile work counts what it is owed:

- the stitching's build (``dynamo_first.py``): the build gives way while a
  forward of Dynamo's graph runs, so a forward's time is owed ``SHARE`` of
  itself, and the time between forwards, when the build runs, pays back
  ``1 - SHARE`` of itself;
- the compile workers (``serving_first.py``): every tick, with ``r`` the
  share of the workers that ran, ``SHARE - r`` of the tick.

Once the compile is owed more than ``OWED_S``, the forward that begins (a
forward of Dynamo's graph, or an uncompiled piece's call) waits until it is
paid back: the serving threads sleep, the process is idle, and serving first
lets every worker run (or the build runs alone).  With ``SHARE`` 0.95 and
``OWED_S`` 0.1 s, a process busy all the time serves for about 100 ms, then
waits for up to ``MAX_WAIT_S``.  The share is high because a pause costs
the compile more than its length (gcc and Inductor stopped and started
again, serving first's own reads): under forwards back to back on 2 cores
(the 3-layer example, ``bench/under_load.py``), at 0.85 and 50 ms the last
swap came at 1.43x the cold compile though forwards waited 84% of the time;
at 0.9 and 100 ms at 0.88x to 1.12x; at 0.95 at 1.23x with 157 to 202
forwards served meanwhile (a cold compile serves none), and idle (the
compile alone) at 0.95x to 1.06x.  At 32 layers the compile alone is
already 1.33x to 1.53x there, and the loaded runs 1.21x to 1.42x: the share
is not what is left to win.  A process busy less than ``1 - SHARE`` of the
time rarely waits; one busy 10% of the time owes more than it pays back,
and its forwards waited 12 to 15 s of a 20 s compile, in waits of up to
``MAX_WAIT_S``, where a cold compile serves nothing (``CREDIT_S`` bounds
what idle time banks, so that a burst after a long idle spell waits after
0.35 s).  Where the workers do not slow the forwards (more cores than both
need), serving first never pauses them, nothing is owed and nothing waits.
Only compile work owes: once every piece has landed (its swap owes the
compile nothing), or the build has ended, a forward never waits.  A wait is at
most ``MAX_WAIT_S``, so a stalled controller delays a forward, never stops
it, and it ends sooner where the caller's ``ready()`` says that what it
waits to run has nothing left to compile (NOTE: [a landed piece does not
wait at the gate], pipeline/tiered/tiered_piece.py).  The figures under an
idle, a light and a back-to-back load are in docs/performance.md ("The
compile's share").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# The share of a busy process's time the compile keeps.
SHARE = 0.95
# Seconds the compile may be owed before a forward waits.
OWED_S = 0.1
# Seconds of credit idle time banks at most (a negative debt).
CREDIT_S = 0.25
# Seconds a forward waits at most, once.
MAX_WAIT_S = 2.0
# How often a wait at the gate asks its caller's ready() again.
READY_POLL_S = 0.02


class CompileShare:
    """What a compile is owed of a busy process's time, and the gate that
    forwards wait at while it is owed too much (NOTE: [the compile's share])."""

    def __init__(self, share: float = SHARE, owed_s: float = OWED_S) -> None:
        self.share = share
        self.owed_s = owed_s
        self._lock = threading.Lock()
        self._owed = 0.0
        self._open = threading.Event()
        self._open.set()
        self._last: float | None = None  # the last ran_until's time
        self.waits = 0  # forwards that waited (for tests and benchmarks)
        self.waited_s = 0.0

    @property
    def owed(self) -> float:
        return self._owed

    @property
    def closed(self) -> bool:
        return not self._open.is_set()

    def add(self, seconds: float) -> None:
        """Owe the compile ``seconds`` more (negative: paid back); the gate
        closes past ``owed_s`` and opens once nothing is owed."""
        with self._lock:
            # Bounded both ways: idle time banks at most CREDIT_S, and a
            # process busy outside the gate makes a forward wait at most
            # about MAX_WAIT_S at a time.
            self._owed = min(max(-CREDIT_S, self._owed + seconds), 2 * self.owed_s)
            if self._owed > self.owed_s:
                self._open.clear()
            elif self._owed <= 0:
                self._open.set()

    def ran_until(self, now: float, running: float) -> None:
        """Since the last call (``time.monotonic()`` then, ``now`` now), a
        ``running`` share (0 to 1) of the compile ran: it is owed ``share -
        running`` of that time."""
        last, self._last = self._last, now
        if last is not None:
            self.add((self.share - running) * (now - last))

    def busy(self, seconds: float) -> None:
        """A forward ran ``seconds`` while the compile gave way to it."""
        self.add(self.share * seconds)

    def idle(self, seconds: float) -> None:
        """The compile ran alone ``seconds``."""
        self.add((self.share - 1.0) * seconds)

    def admit(self, ready: Callable[[], bool] | None = None) -> None:
        """Where a forward begins: wait while the compile is owed too much,
        or until ``ready()`` says what the caller waits to run has nothing
        left to compile (NOTE: [a landed piece does not wait at the gate])."""
        if self._open.is_set():
            return
        start = time.monotonic()
        end = start + MAX_WAIT_S
        while not self._open.wait(min(READY_POLL_S, end - time.monotonic())):
            if time.monotonic() >= end or (ready is not None and ready()):
                break
        self.waits += 1
        self.waited_s += time.monotonic() - start

    def pay_back(self) -> None:
        """Where a forward begins, with no thread to pay back (the build's
        own gate): sleep as long as paying back what is owed takes."""
        with self._lock:
            owed = self._owed
            if owed <= self.owed_s:
                return
        wait = min(owed / (1.0 - self.share), MAX_WAIT_S)
        time.sleep(wait)
        self.waits += 1
        self.waited_s += wait
        self.idle(wait)

    def release(self) -> None:
        """Nothing more is owed: every forward goes on (the compile ended)."""
        with self._lock:
            self._owed = 0.0
            self._last = None
            self._open.set()


__all__ = ["CREDIT_S", "MAX_WAIT_S", "OWED_S", "READY_POLL_S", "SHARE", "CompileShare"]
