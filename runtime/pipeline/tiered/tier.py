"""A tiered start: serve on uncompiled pieces while compile workers build them.

NOTE: [a tiered start]
With ``CompilationConfig.tiered_start``, a backend call that finds pieces
missing from its cache entry does not compile them before it returns.  It
splits, plans and emits as always, and every missing piece first runs as its
own GraphModule (``deferred.py``), which computes what the compiled
piece computes.  Before it returns, the call forks compile workers
(``compile_workers.py``; a cold call returns first and does all this on a
thread: NOTE: [Dynamo's graph serves while the stitching is built]): each
runs the ordinary compile of its pieces (``Compilation.compile_piece``,
Inductor, the artifact saved and its prebuilt record written) into the same
cache entry, and reports each piece's record when it is there.  The serving
process loads the piece from the entry with the prebuilt loader a warm start
uses, runs it beside the uncompiled piece on the inputs of that call, and swaps
it in where the outputs agree (:data:`SWAP_TOLERANCE`): the piece's backend
takes the compiled runnables and becomes a plain :class:`PiecewiseBackend`, so
a swapped piece costs nothing more than a cold-compiled one.  A swap happens
as the piece lands, on a thread, with the inputs its first call kept, or
else at the piece's next call (NOTE: [a landed piece swaps without its next
call], swap.py); the pieces are functions, so a forward that runs some
pieces compiled and others not computes the same numbers.

Workers are processes, not threads: most of Inductor's time is Python, and
a thread would take the serving process's GIL.  They are forked inside the
backend call where they can be, and spawned where the process has used CUDA
(NOTE: [forked or spawned compile workers], compile_workers.py).  Under CUDA
graphs the uncompiled pieces are captured at once and again after each
landing (NOTE: [uncompiled pieces under CUDA graphs], cudagraph/wrapper.py).

What can go wrong leaves serving on the uncompiled piece, with one warning:
a worker that dies (killed, out of memory: its pieces are not reported), a
compile that fails, a compiled piece that does not load, one whose compile
added guards this process's graph does not hold (the next start uses them),
and one whose numbers differ, which is recorded in the entry's index
(``Index.refused``) so that no later start compiles or runs it again
(NOTE: [a piece that compiled wrong]).  A piece is recorded in the index
only once its artifacts are written, so an exit mid-compile leaves no partial
entry: the next start loads what landed and compiles what is missing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from stitch.codegen.pieces import mutates
from stitch.core import StitchCacheError

from ...compat.guard_codec import readable
from ...config import CompilationConfig
from ...store.cache import CompileCache
from ...store.index import PieceRecord
from ..artifact_source import ArtifactSource
from ..piecewise import PiecewiseBackend, RangeWarnings
from .completions import run_completions
from .size_guards import guard_piece, refused_guard, size_predicate
from .swap import swap_when_landed
from .swap_check import unset_outputs
from .tiered_piece import TieredPiece

log = logging.getLogger("stitch")
# Seconds an exit waits for each thread a completion started (the publish).
EXIT_JOIN_S = 60.0


class Tier:
    """The pieces of one backend call that run uncompiled, their workers'
    reports, the swaps, and the timeline."""

    def __init__(
        self,
        config: CompilationConfig,
        cache: CompileCache,
        source: ArtifactSource,
        backends: dict[str, PiecewiseBackend],
        graphs: dict[str, fx.GraphModule],
        warnings: RangeWarnings,
        started: float,
        label: str,
        *,
        dispatch: dict[Any, Any] | None = None,
        cuda_graphs: Any = None,
        held_guards: frozenset[str] = frozenset(),
        pids: Sequence[int] = (),
        returned_at: float = 0.0,
    ) -> None:
        self.config = config
        self.cache = cache
        self.source = source
        self.graphs = graphs
        self.warnings = warnings
        self.started = started
        self.label = label
        self.backends: dict[str, PiecewiseBackend] = {}
        for name in graphs:
            backend = backends[name]
            backend.__class__ = TieredPiece
            backend._tier = self  # type: ignore[attr-defined]
            self.backends[name] = backend
        self.mutating = {name: mutates(g) for name, g in graphs.items()}
        self.unset = {name: unset_outputs(g) for name, g in graphs.items()}
        self._lock = threading.Lock()
        # Held by a landed piece's check off the serving thread, one at a time,
        # and the bytes of inputs the pieces kept for it (swap.py).
        self.checking = threading.Lock()
        self.kept_bytes = 0
        self._landed = threading.Event()  # every piece reported or given up
        self._settled = threading.Event()  # every piece swapped or given up
        self.reported: set[str] = set()
        self.compiled_at: dict[str, float] = {}
        self.swapped_at: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self._complete: list[Callable[[bool], None]] = []
        # Seconds from ``started`` until the workers had their pieces.
        self.returned_at = returned_at
        # The function's per-size tables of runnables (loader.SizeTables), if any.
        self.dispatch = dispatch
        # The function's CUDA graphs (cudagraph.FunctionGraphs), if any: NOTE:
        # [uncompiled pieces under CUDA graphs].
        self.cuda_graphs = cuda_graphs
        # The workers compiling the pieces (none: they compiled in this process).
        self.pids = list(pids)
        # An exit stopped its workers (NOTE: [an exit the user asked for waits
        # at most seconds]): pieces given up now are said once, by the exit.
        self.stopping = False
        # The pieces came from another replica's entry, installed from the
        # fleet's store, rather than from this process's workers.
        self.installed = False
        # The guards this call's graph holds under (a piece compiled under
        # more is not swapped in).
        self.held_guards = held_guards
        # Pieces compiled under guards on their size alone: where they hold.
        self.size_guards: dict[str, Callable[[int], bool]] = {}

    # -- what the workers report (their reader threads) ------------------------
    def landed(self, name: str, record: PieceRecord, guards: Sequence[str]) -> None:
        now = self._now()
        with self._lock:
            self.reported.add(name)
            self.compiled_at[name] = now
        backend = self.backends[name]
        # NOTE: [guards a landing adds on the size alone] (size_guards.py)
        holds = (
            size_predicate(self.graphs[name], backend.size_index, guards)
            if guards
            else None
        )
        if guards and holds is None:
            refused = refused_guard(guards)
            self.give_up(
                name,
                (
                    f"a guard its compile reported is refused: {refused}"
                    if refused
                    else f"its compile added the guards {[readable(g) for g in guards]}, "
                    "which this process's graph does not hold (the next start uses them)"
                ),
            )
        else:
            if holds is not None:
                self.size_guards[name] = holds
                log.info(
                    "stitch: piece %s compiled under guards on its size %s: it runs "
                    "compiled at the sizes where they hold",
                    self._name(name),
                    [readable(g) for g in guards],
                )
            backend._landed = record  # type: ignore[attr-defined]
            if self.cuda_graphs is not None:
                # Replays run no Python: the next forward captures again, and
                # its warm-up call swaps (NOTE: [uncompiled pieces under CUDA
                # graphs]).  This thread only asks: NOTE: [graphs are dropped
                # on the serving thread].
                self.cuda_graphs.recapture()
            elif holds is None:
                swap_when_landed(self, backend)  # type: ignore[arg-type]
        self._check_landed()

    def land_installed(self) -> None:
        """Every piece from the entry another replica compiled, now installed
        in this entry's folder from the fleet's store."""
        self.installed = True
        try:
            index = CompileCache.existing(self.cache.root, self.cache.directory).index
        except StitchCacheError as exc:
            index, why = None, f"the fleet's entry does not open ({exc})"
        else:
            why = f"the fleet's entry {self.cache.directory} has no record of it"
        for name in self.backends:
            record = index.pieces.get(name) if index is not None else None
            if record is None:
                self.give_up(name, why)
            else:
                extra = [g for g in index.guards if g not in self.held_guards]
                self.landed(name, record, extra)

    def give_up(self, name: str, why: str) -> None:
        """Leave ``name`` uncompiled for this process, with one warning."""
        with self._lock:
            if name in self.failed or name in self.swapped_at:
                return
            self.reported.add(name)
            self.failed[name] = why
        backend = self.backends[name]
        backend.__class__ = PiecewiseBackend
        # Its kept inputs go (NOTE: [a landed piece swaps without its next call]).
        backend.__dict__.pop("_inputs", None)
        self._drop_runnables()
        level = logging.DEBUG if self.stopping else logging.WARNING  # the exit said so
        log.log(level, "stitch: piece %s stays uncompiled: %s", self._name(name), why)
        self._check_landed()
        self._check_settled()

    # -- the swap's claim and install (swap.py: on any thread) -----------------
    def claim(self, backend: TieredPiece) -> PieceRecord | None:
        """Take ``backend``'s landed record to check it (None: taken already,
        or the piece swapped in or given up)."""
        with self._lock:
            if type(backend) is not TieredPiece:
                return None
            record, backend._landed = backend._landed, None
            if record is not None:
                backend._checking = True
        return record

    def unclaim(self, backend: TieredPiece, record: PieceRecord) -> None:
        """Give a claimed record back: the piece's next call checks it."""
        with self._lock:
            backend._landed, backend._checking = record, False

    def install(
        self,
        backend: TieredPiece,
        compiled: PiecewiseBackend,
        holds: Callable[[int], bool] | None,
    ) -> None:
        """Swap ``compiled`` in: ``backend`` becomes it, a plain backend.  The
        class first, then the whole ``__dict__`` in one assignment: a call on
        another thread meanwhile runs one form or the other (NOTE: [a landed
        piece swaps without its next call])."""
        name = backend.name
        with self._lock:
            self.swapped_at[name] = self._now()
        if holds is not None:  # the uncompiled piece serves where they fail
            fallback = PiecewiseBackend.__new__(PiecewiseBackend)
            fallback.__dict__.update(backend.__dict__)
            fallback.__dict__.pop("_inputs", None)
        backend.__class__ = PiecewiseBackend
        backend.__dict__ = dict(compiled.__dict__)
        if holds is not None:
            guard_piece(backend, holds, fallback)
        self._drop_runnables()
        log.info(
            "stitch: piece %s runs compiled from %.2fs (compiled at %.2fs)",
            self._name(name),
            self.swapped_at[name],
            self.compiled_at.get(name, float("nan")),
        )
        self._check_settled()

    def capturing(self) -> bool:
        """Whether a CUDA graph is being captured now (no swap runs inside one)."""
        if self.cuda_graphs is not None and self.cuda_graphs.capturing():
            return True
        # Graphs captured around this function (an engine's own).
        return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()

    def _drop_runnables(self) -> None:
        # The tables fill again with each piece's runnables as they are now.
        # Under graphs that waits for the next forward (any thread may call
        # this); a plain function's tables hold only references to runnables
        # the backends keep, so clearing them frees no CUDA memory.
        if self.dispatch is not None:
            self.dispatch.clear()
        if self.cuda_graphs is not None:
            self.cuda_graphs.drop_runnables()

    # -- progress -------------------------------------------------------------
    def _check_landed(self) -> None:
        if self.reported >= set(self.backends) and not self._landed.is_set():
            self._landed.set()

    def _check_settled(self) -> None:
        with self._lock:
            done = set(self.swapped_at) | set(self.failed)
            if done < set(self.backends) or self._settled.is_set():
                return
            self._settled.set()
            callbacks, self._complete = self._complete, []
        ok = not self.failed
        log.info(
            "stitch: tiered start of %s: %d of %d pieces compiled, last swap at "
            "%.2fs%s",
            self.label,
            len(self.swapped_at),
            len(self.backends),
            max(self.swapped_at.values(), default=0.0),
            "" if ok else f" ({len(self.failed)} stay uncompiled)",
        )
        run_completions(self.label, callbacks, ok, "")

    def complete_at_exit(self) -> None:
        """At the process's exit, once every piece has landed (NOTE: [a process
        that exits normally waits for its workers]): run what waits for the
        last swap (the saved forward written, and published) though no piece
        swapped here.  What landed is in the cache as the next process loads
        it, which compares nothing with the uncompiled pieces either; a piece
        given up, or refused by a swap's check, leaves the record unwritten
        (or its index hash stale) as before."""
        with self._lock:
            if self._settled.is_set() or not self._landed.is_set():
                return
            callbacks, self._complete = self._complete, []
        before = set(threading.enumerate())
        run_completions(self.label, callbacks, not self.failed, "at exit: ")
        # The threads they started (the fleet's publish) end before the exit
        # goes on, which would stop them half done.
        for thread in set(threading.enumerate()) - before:
            if not thread.daemon:
                thread.join(EXIT_JOIN_S)

    def when_complete(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(every piece swapped)`` once every piece is swapped in
        or given up (now, if that is already so)."""
        with self._lock:
            if not self._settled.is_set():
                self._complete.append(callback)
                return
        run_completions(self.label, [callback], not self.failed, "")

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every piece has landed in the cache or was given up."""
        return self._landed.wait(timeout)

    @property
    def settled(self) -> bool:
        return self._settled.is_set()

    def timeline(self) -> dict[str, Any]:
        """Seconds from the backend call's start: when it returned, when each
        piece was compiled and swapped in, and why pieces stay uncompiled."""
        with self._lock:
            return {
                "returned_at": self.returned_at,
                "compiled_at": dict(self.compiled_at),
                "swapped_at": dict(self.swapped_at),
                "last_swap_at": max(self.swapped_at.values(), default=None),
                "uncompiled": dict(self.failed),
            }

    def _now(self) -> float:
        return time.perf_counter() - self.started

    def _name(self, name: str) -> str:
        path = self.backends[name].module_path
        return f"{name} ({path})" if path else name
