"""The swap: a landed piece checked beside its uncompiled form and swapped in,
at its next call or, where its inputs were kept, when it lands.

NOTE: [a landed piece swaps without its next call]
A swap runs the compiled piece beside the uncompiled one on the inputs of a
call (NOTE: [a tiered start], tier.py), so it used to wait for the piece's
next call.  A graph that is not called for a while kept its landed pieces
uncompiled all that time, and its next call paid the load and both runs: a
transformers Llama's prefill graph, called once a prompt, swapped in 48
decode steps after its pieces had landed, and under the light load its
last swap came at 1.43x the cold compile's time (the target is 1.3x).

So an uncompiled piece keeps a copy of the inputs of its first call
(:func:`keep_inputs`; a graph whose first forward ran Dynamo's graph makes
that call in a rehearsal: NOTE: [the first forward rehearsed]), and when it
lands, a thread of its own loads the
compiled form, runs both forms on copies of those inputs, and swaps it in
where they agree, as the call would have (:func:`swap_when_landed`).  A piece
a call is already swapping is left to that call, and the other way round:
whoever takes the landed record first (``Tier.claim``) checks it.  While
the thread checks, the piece's calls run uncompiled without waiting at the
compile's gate, as they would once landed.

The copy is kept only where running the piece again off the serving thread
computes what it would compute on it:

- no CUDA graphs and every tensor on the CPU (a second thread's kernels
  would land inside a capture);
- gradients off, as a serving process runs, and no autocast; inference mode
  is kept and entered again by the thread;
- at most :data:`KEEP_BYTES` copied by the pieces of one tier together: a
  parameter is referenced, not copied, unless the piece writes its inputs;
  every other tensor is copied, because the next pieces and splitting ops
  write into caches and buffers;
- no guard on the piece's size (a guarded piece swaps at a size they hold);
- every op of the piece computes from its arguments alone, in this process
  (:func:`not_local`): aten's, prims' and Stitch's own.  A collective run
  again on one rank, or an op that reads an engine's forward context, would
  hang or write what the serving forward owns.

Otherwise the piece swaps at its next call, as before.  With the rehearsal,
the Llama's light load came to 1.19x in two rounds, and its idle runs
settled within two forwards rather than 47 (docs/performance.md, "A landed
piece swaps in as it lands").  The swap itself is
one assignment of the backend's class and one of its ``__dict__``: a call
running on the serving thread meanwhile runs one form or the other, and the
two compute the same numbers, as checked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from stitch.core import StitchCacheError

from ...store.index import EntryRecord, PieceRecord
from ...targets import Target
from ..piecewise import PiecewiseBackend
from .swap_check import copy_input, differences

# ``Tier`` and ``TieredPiece`` below are ``Any``: tier.py and tiered_piece.py
# import this module.
Tier = TieredPiece = Any

log = logging.getLogger("stitch")
# Bytes of inputs the uncompiled pieces of one tier may copy, all together, to
# be checked when they land (each copy goes with its piece's swap).
KEEP_BYTES = 128 << 20
# Kept for a piece whose inputs are not kept (so that no later call tries).
NOT_KEPT = False
# The namespaces of ops that compute from their arguments alone, in this process.
LOCAL_NAMESPACES = frozenset({"aten", "prims", "stitch"})
# Set on a thread that runs the stitched function off the serving thread
# (rehearsal.py): its uncompiled pieces do not wait at the compile's gate.
rehearsing = threading.local()


def swap(tier: Tier, backend: TieredPiece, args: tuple[Any, ...]) -> Any:
    """A call of a landed piece: check its compiled form beside it on ``args``
    and swap it in where they agree; the uncompiled result either way."""
    name = backend.name
    holds = tier.size_guards.get(name)
    if holds is not None and not holds(int(args[backend.size_index])):  # type: ignore[index]
        return uncompiled(backend, args)  # it swaps at a size they hold for
    record = tier.claim(backend)
    if record is None:  # a thread is checking it since it landed (the NOTE)
        return uncompiled(backend, args)
    loaded, result = _check_and_install(tier, backend, record, args, holds)
    return result if loaded else uncompiled(backend, args)


def _check_and_install(
    tier: Tier,
    backend: TieredPiece,
    record: PieceRecord,
    args: tuple[Any, ...],
    holds: Callable[[int], bool] | None,
) -> tuple[bool, Any]:
    """Load a claimed ``record``, check it beside ``backend`` on ``args``, and
    install or refuse it: whether it loaded (else the piece is given up and
    nothing ran), and the uncompiled result."""
    name = backend.name
    try:
        compiled = compiled_backend(tier, name, record)
    except StitchCacheError as exc:
        tier.give_up(name, f"its compiled form does not load ({exc})")
        return False, None
    result, differs = check(tier, backend, compiled, args)
    if differs:
        refuse(tier, name, record, differs)
    else:
        tier.install(backend, compiled, holds)
    return True, result


def uncompiled(backend: PiecewiseBackend, args: tuple[Any, ...]) -> Any:
    """Run the piece's own runnables (before its swap) for ``args``."""
    if backend.size_index is None:
        return backend.general(*args)
    size = int(args[backend.size_index])
    return PiecewiseBackend.runnable_for(backend, size)(*args)


def compiled_backend(tier: Tier, name: str, record: PieceRecord) -> PiecewiseBackend:
    """The compiled form of a landed piece, loaded from the cache entry."""
    from ..materialize import piece_backend

    graph = tier.graphs[name]

    def runnable(piece: str, target: Target, entry: EntryRecord) -> Any:
        return tier.source.landed(piece, graph, target, entry, record.size_index)

    return piece_backend(name, record, tier.config, runnable, tier.warnings)


def check(
    tier: Tier, backend: PiecewiseBackend, compiled: PiecewiseBackend, args: tuple
) -> tuple[Any, str]:
    """Both runs of one call: the uncompiled result (the one returned) and
    how the compiled one differs ("" when it agrees).  A piece that writes
    its inputs runs compiled on copies, so only the uncompiled run writes."""
    name = backend.name
    mutating = tier.mutating.get(name, True)
    copies = tuple(copy_input(a) for a in args) if mutating else args
    try:
        got = compiled(*copies)
    except Exception as exc:  # noqa: BLE001 - the uncompiled piece serves
        return uncompiled(backend, args), (f"it raised {type(exc).__name__}: {exc}")
    want = uncompiled(backend, args)
    differs = differences(got, want, "output", tier.unset.get(name, set()))
    if not differs and mutating:
        differs = differences(copies, args, "written input")
    return want, differs


def refuse(tier: Tier, name: str, record: PieceRecord, differs: str) -> None:
    """A compiled form that differs: refused in the entry's index, so that no
    later start compiles or runs it again (NOTE: [a piece that compiled
    wrong]), and the piece left uncompiled here."""
    for entry in record.entries:
        tier.cache.refuse(entry.key, f"its compiled form differed: {differs}")
    tier.give_up(name, f"its compiled form differs from it: {differs}")


@dataclass(frozen=True)
class KeptInputs:
    """A copy of the inputs of one uncompiled call, and its inference mode."""

    args: tuple[Any, ...]
    inference: bool


def keep_inputs(tier: Tier, name: str, args: tuple[Any, ...]) -> KeptInputs | bool:
    """The inputs of the first uncompiled call of piece ``name``, copied where
    the NOTE allows, else :data:`NOT_KEPT`."""
    if tier.cuda_graphs is not None or not runs_off_thread(tier.graphs[name]):
        return NOT_KEPT
    writes = tier.mutating.get(name, True)
    kept, size = copy_inputs(
        args,
        lambda i, t: isinstance(t, torch.nn.Parameter) and not writes,
        KEEP_BYTES - tier.kept_bytes,
    )
    if kept is None:
        return NOT_KEPT
    # One thread at a time: the serving one, or the rehearsal before it serves.
    tier.kept_bytes += size
    return kept


def runs_off_thread(graph: fx.GraphModule) -> bool:
    """Whether ``graph``, run now on another thread, computes what it computes
    on this one (the NOTE): gradients off, no autocast, every op local."""
    if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
        return False
    return not not_local(graph)


def copy_inputs(
    args: tuple[Any, ...], referenced: Callable[[int, torch.Tensor], bool], room: int
) -> tuple[KeptInputs | None, int]:
    """A copy of ``args`` to run off the serving thread, with the bytes it
    copied: every tensor copied but those ``referenced(i, tensor)`` keeps as
    they are.  None where a tensor is off the CPU or of a subclass (whose plain
    copy may not be what it is), or the copies would take more than ``room``
    bytes."""
    copied, total = [], 0
    for i, value in enumerate(args):
        if not isinstance(value, torch.Tensor):
            copied.append(False)
            continue
        if value.device.type != "cpu":
            return None, 0
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            return None, 0
        copy = not referenced(i, value)
        copied.append(copy)
        total += value.nelement() * value.element_size() if copy else 0
    if total > room:
        return None, 0
    kept = tuple(copy_input(v) if c else v for v, c in zip(args, copied, strict=True))
    return KeptInputs(kept, torch.is_inference_mode_enabled()), total


def swap_when_landed(tier: Tier, backend: TieredPiece) -> None:
    """Start the thread that checks and swaps in ``backend``'s landed record,
    if its inputs were kept."""
    if not isinstance(backend._inputs, KeptInputs):
        return
    # Not a daemon (NOTE: [the last swap's work is not cut off at exit]).
    threading.Thread(
        target=_check_and_swap,
        args=(tier, backend, backend._inputs),
        name=f"stitch-swap-{backend.name}",
        daemon=False,
    ).start()


def _check_and_swap(tier: Tier, backend: TieredPiece, kept: KeptInputs) -> None:
    """NOTE: [the last swap's work is not cut off at exit]
    The thread that swaps in a tier's last piece runs what waited for it: the
    saved forward written, and the threads that publish it and the entry to
    the fleet's store.  It was started by a worker's reader, a daemon, and a
    thread is a daemon when the thread that starts it is, so all of them were
    daemons.  A script that exits once the tier has settled was cut off
    partway: in CI (runs 45 and 47) a fleet replica exited without publishing
    or letting its lease go, and the replica waiting on the lease compiled
    again 30 s later.  Now this thread and the ones the completions start
    are not daemons, so the exit waits for them.  A check that has not
    begun when the main thread has ended is skipped: the exit's hook then
    runs the completions (``Tier.complete_at_exit``), and a later call in a
    process still serving swaps the piece in, as before."""
    with tier.checking:  # one check at a time: the serving process's cores
        if tier.stopping or not threading.main_thread().is_alive():
            return
        record = tier.claim(backend)
        if record is None:
            return  # a call took it
        try:
            with torch.inference_mode(kept.inference), torch.no_grad():
                _check_and_install(tier, backend, record, kept.args, None)
        except Exception as exc:  # noqa: BLE001 - the next call swaps, as before
            log.debug(
                "stitch: piece %s is checked at its next call: %r", backend.name, exc
            )
            tier.unclaim(backend, record)


def not_local(graph: fx.GraphModule) -> str:
    """The first op of ``graph`` that may do more than compute from its
    arguments in this process ("" if none): an op outside
    :data:`LOCAL_NAMESPACES`, a higher-order op, or torch.distributed's."""
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        if isinstance(target, torch._ops.HigherOrderOperator):
            return str(target)
        if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
            name = (
                target.name()
                if isinstance(target, torch._ops.OpOverload)
                else target._qualified_op_name
            )
            if name.split("::")[0] not in LOCAL_NAMESPACES:
                return name
        elif (getattr(target, "__module__", None) or "").startswith(
            "torch.distributed"
        ):
            return getattr(target, "__name__", str(target))
    return ""
