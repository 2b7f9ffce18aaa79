"""A piece's backend while it runs uncompiled in a tiered start (NOTE: [a
tiered start], tier.py)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from ...workers.serving_first import controller
from ..piecewise import PiecewiseBackend
from .swap import keep_inputs, rehearsing, swap, uncompiled

if TYPE_CHECKING:
    from ...store.index import PieceRecord

log = logging.getLogger("stitch")
# Said once a process: forwards run uncompiled pieces (NOTE: [say what is
# still compiling]).
_SAID = threading.Event()


class TieredPiece(PiecewiseBackend):
    """A piece's backend while its compiled form has not been swapped in: it
    runs the uncompiled piece until a worker's record has landed, then swaps
    (``swap.py``) and becomes a plain :class:`PiecewiseBackend`.

    NOTE: [a landed piece does not wait at the gate]
    An uncompiled piece's call waits at the compile's gate while the compile
    is owed (NOTE: [the compile's share]), up to ``MAX_WAIT_S`` at each piece,
    so one forward could wait several times.  A transformers Llama decoding
    under the light load had one decode step wait 3.9 s at two pieces: 2.0
    s at a piece that landed 0.6 s before that wait ended, then 1.9 s at the
    next, which had landed before the step reached it.  Seven landed pieces
    swapped in 2.5 s after they landed.  A landed piece owes the
    compile nothing more, so its call does not wait: it swaps in at once, and
    a call waiting at the gate ends its wait when its own piece lands.  The
    other pieces still compiling keep their gate, so the compile is paid
    its share as before.
    """

    _landed: PieceRecord | None = None
    # NOTE: [a landed piece swaps without its next call] (swap.py):
    # its landed record is being checked; the inputs its first call kept.
    _checking = False
    _inputs: Any = None
    _tier: Any  # its Tier (tier.py imports this module)

    def __call__(self, *args: Any) -> Any:
        tier = self._tier
        if tier.capturing():
            return uncompiled(self, args)
        if self._landed is None and not getattr(rehearsing, "on", False):
            # NOTE: [the compile's share]; [a landed piece does not wait at the
            # gate]; a rehearsal is no forward (NOTE: [the first forward rehearsed])
            controller().admit(self._ready)
        if type(self) is not TieredPiece:
            # Given up or swapped in (another thread) while it waited: a plain
            # backend now.
            return self(*args)
        if self._landed is not None:
            return swap(tier, self, args)
        if self._inputs is None:
            self._inputs = keep_inputs(tier, self.name, args)
        return uncompiled(self, args)

    def _ready(self) -> bool:
        # Landed (or being checked), or given up or swapped in by another
        # thread (a plain backend now, without ``_landed``): nothing of it is
        # left to compile.
        return (
            type(self) is not TieredPiece or self._landed is not None or self._checking
        )

    def runnable_for(self, size: int) -> Any:
        # What a size's dispatch table holds until the swap, which empties the
        # tables (Tier.dispatch) so that they fill with the compiled runnables.
        def call(*args: Any) -> Any:
            return self(*args)

        return call


def say_still_compiling(tier: Any) -> None:
    """NOTE: [say what is still compiling]
    A benchmark that times forwards right after the first call of
    ``torch.compile(model, backend="stitch")`` timed the uncompiled pieces of
    a tiered start (1.41x torch.compile's time per decode step, 1.00x once
    compiled), and nothing said so.  When a tier's workers start, the process
    says, once, how many pieces compile and how to wait for them:
    ``stitch.runtime.wait_compiled()``, then one forward, which swaps each
    landed piece in (later tiers say so at INFO, with their workers)."""
    if _SAID.is_set():
        return
    _SAID.set()
    log.warning(
        "stitch: %s serves while %d of its pieces compile in compile workers: "
        "until each lands it runs uncompiled, more slowly.  To time compiled "
        "forwards, call stitch.runtime.wait_compiled() and run one forward "
        "first (docs/cold_start.md)",
        tier.label,
        len(tier.backends) - len(tier.reported),
    )
