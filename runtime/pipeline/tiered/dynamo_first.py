"""A cold tiered call's function while its stitching is built: Dynamo's graph.

NOTE: [Dynamo's graph serves while the stitching is built]
A tiered start serves at once on uncompiled pieces, but its backend call
still split the graph, ran it over fake tensors to plan each piece, and
emitted the source before it returned: 2.15 s of a 32-layer example's first
output on 2 cores (docs/performance.md, "The first output at 32 layers"),
against a target of 1.5 s more than Dynamo alone.  None of that is needed to
compute the first outputs: Dynamo's own graph computes what the stitched
function with uncompiled pieces computes, op for op.  So a cold call of a
tiered start (no source in its cache entry, no CUDA graphs, no profiler, not
saved by aot_compile) makes its fake inputs and opens its entry, as every
call does, then returns a :class:`DynamoFirst`.  It runs Dynamo's graph, and
a thread builds the rest (``Compilation.built``), beginning once the first
forward has ended: the first output waits for nothing more than a guard on
each lifted float.  The same thread then starts the tier's workers, in the
backend call's tracing context as a backend call would (transformers' engine
starts them from its trace thread too: NOTE: [the engine serves while Dynamo
traces]), after any forward of Dynamo's graph in flight has ended; the next
call serves the stitched function.

Forwards come first: the build gives way at each piece and phase
(``giving_way.give_way``) once it has run ``SLICE_S`` while a forward of
Dynamo's graph is in flight, until that forward ends or ``WAIT_S`` has
passed.  A thread's Python would otherwise take the GIL each time a
forward's op released it.  Under forwards back to back that kept the build
about a sixth of the time, and at 32 layers its 2 s took most of a minute
before a worker started; so the build has the compile's share of the time:
a forward that begins while the build is owed too much waits for it first
(NOTE: [the compile's share]).

What Dynamo checks before it runs the graph are the guards in the ShapeEnv
once the backend call has returned; it builds its own from them before the
first forward, after which the build begins and marks the ShapeEnv.  The
build runs the split graph over the same fake inputs, which is meant to add
no guard (the example's fake run adds none); a build that did add one made a
function that holds only under it, so the graph keeps running Dynamo's
graph, with one warning, and the entry records the guard for the next start
(NOTE: [the guards a backend call adds are part of its cache entry]).  Before
the stitched function serves, the build runs it once on a copy of the first
forward's inputs, so that its pieces keep inputs to swap in with as they land
(NOTE: [the first forward rehearsed], rehearsal.py).  A
build that fails raises its error at each later call, as a backend call that
failed would at each trace.  Whoever reads the
backend's results (``StitchBackend.compiled``, ``wait_compiled``) waits for
the build, beginning it now if no forward has; a later backend call waits
for it too, so two never build at once, and so does a normal exit (NOTE: [a
process that exits normally waits for its workers]).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ...compat.dynamo import backend_call_context
from ...compat.guard_codec import readable
from ...compat.shapes import added_guards, guard_mark
from ...workers.exit_wait import finish_before_exit
from ...workers.giving_way import giving_way
from ...workers.serving_first import controller
from .rehearsal import keep_graph_inputs, rehearse

log = logging.getLogger("stitch")

# Seconds the build runs before it gives way to a forward in flight.
SLICE_S = 0.05
# Seconds it waits at most for that forward to end.
WAIT_S = 0.25
# Seconds after the backend call's return that the build begins if no
# forward has ended by then (Dynamo builds its guards first: well under this).
START_S = 60.0


class DynamoFirst:
    """Dynamo's graph, served until the stitching built beside it takes over
    (NOTE: [Dynamo's graph serves while the stitching is built]).

    ``compilation`` is the backend call's ``Compilation`` after its ``open()``
    (``opened``); ``on_compiled`` gets its result once, on the thread that
    finishes it."""

    def __init__(
        self,
        compilation: Any,
        opened: tuple[Any, ...],
        on_compiled: Callable[[Any], None],
    ) -> None:
        self._gm = compilation.gm
        self._compilation = compilation
        self._on_compiled = on_compiled
        self._label = f"graph {opened[1][:12]}"
        self._context = backend_call_context()
        self._cond = threading.Condition()
        self._busy = 0  # forwards of Dynamo's graph in flight
        self._slice_start = 0.0
        # When the last forward ended (NOTE: [the compile's share]).
        self._ended_at = 0.0
        self._begin = threading.Event()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._result: Any = None  # the CompiledModel
        self._error: BaseException | None = None
        self._added: list[str] = []
        self._fn: Callable[..., Any] | None = None
        # The first forward's inputs, for the rehearsal (NOTE: [the first
        # forward rehearsed], rehearsal.py); kept once.
        self._kept: Any = None
        self._keep = True
        # NOTE: [a process that exits normally waits for its workers]: an exit
        # begins the build now and waits for it, then for the workers it starts.
        finish_before_exit(self._done, self._label, self._begin.set)
        log.info(
            "stitch: %s runs Dynamo's graph until its stitching is built, after "
            "the first forward",
            self._label,
        )
        threading.Thread(
            target=self._build, args=(opened,), name="stitch-build", daemon=True
        ).start()

    def __call__(self, *args: Any) -> Any:
        # Read before the function: the build sets the function, then drops the graph.
        gm, fn = self._gm, self._fn
        if fn is not None:
            return fn(*args)
        if self._error is not None:
            raise self._error
        building = self._begin.is_set() and not self._done.done()
        if building:
            self._owe_build()
        if self._keep:
            self._keep = False
            self._kept = keep_graph_inputs(gm, args)
        with self._cond:
            self._busy += 1
        start = time.monotonic()
        try:
            return gm(*args)
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()
            self._begin.set()
            if building:
                self._ended_at = time.monotonic()
                controller().share.busy(self._ended_at - start)

    def _owe_build(self) -> None:
        """A forward begins while the build runs: what the build ran alone since
        the last forward is paid back, and where it is owed too much the
        forward waits for it (NOTE: [the compile's share])."""
        share = controller().share
        if self._ended_at:
            share.idle(time.monotonic() - self._ended_at)
        share.pay_back()

    @property
    def stitched(self) -> bool:
        """Whether the stitched function serves (from the call after the build)."""
        return self._fn is not None and not self._added

    def result(self) -> Any:
        """The backend call's ``CompiledModel``, the build begun now if it has
        not; raises the build's error."""
        self._begin.set()
        self._done.result()
        if self._error is not None:
            raise self._error
        return self._result

    def settle(self) -> None:
        """Wait for the build; its error is raised at the function's next call."""
        with contextlib.suppress(Exception):
            self.result()

    def _build(self, opened: tuple[Any, ...]) -> None:
        self._begin.wait(START_S)
        mark = guard_mark(self._compilation.entry_guards.shape_env)
        try:
            with self._context():
                with giving_way(self._give_way):
                    built = self._compilation.built(*opened)
                self._added = _added_since(mark)
                # Forked workers start here: best not beside a forward.
                with self._cond:
                    self._cond.wait_for(lambda: not self._busy, 4 * WAIT_S)
                compiled = self._compilation.finish(built)
            self._result = compiled
            self._on_compiled(compiled)
            if self._added:
                self._warn_added()
                self._fn = self._gm.__call__
            else:
                if self._kept is not None and compiled.tier is not None:
                    rehearse(compiled.fn, self._kept, self._label)
                self._fn = compiled.fn
                self._gm = None  # nothing calls it again: its graph and metadata go
            self._kept = None
            self._compilation = None
        except BaseException as exc:  # raised at the function's next call
            self._error = exc
        finally:
            # What the build was owed ends with it (NOTE: [the compile's share]).
            controller().share.release()
            self._done.set_result(None)

    def _give_way(self) -> None:
        if time.perf_counter() - self._slice_start < SLICE_S:
            return
        with self._cond:
            if self._busy:
                self._cond.wait_for(lambda: not self._busy, WAIT_S)
        self._slice_start = time.perf_counter()

    def _warn_added(self) -> None:
        log.warning(
            "stitch: %s keeps running Dynamo's graph: building its "
            "stitching added %d guard(s) Dynamo does not check (%s); the cache "
            "entry records them for the next start",
            self._label,
            len(self._added),
            ", ".join(readable(g) for g in self._added[:3]),
        )


def _added_since(mark: Any) -> list[str]:
    try:
        return added_guards(mark)
    except Exception as exc:  # noqa: BLE001 - a guard that does not encode is one
        return [str(exc)]
