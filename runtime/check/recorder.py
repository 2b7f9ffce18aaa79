"""What the check saw of every piece: its calls in each run, and how far each
call was from what it should have been.

NOTE: [three runs of one forward]
Per size the check runs the stitched function three times on the same inputs
and the same model state (run.py puts both back before each run):

- the *reference*: every piece is its uncompiled GraphModule (``ReferencePiece``);
  the inputs of each piece call are kept;
- the *check*: every piece is its compiled runnable, as served, and beside it
  its uncompiled GraphModule on copies of the same inputs
  (``CheckedPiece``).  The compiled outputs go on, so each later piece sees
  what serving gives it; each call's inputs are compared with the
  reference's inputs of the same call;
- with CUDA graphs, the *replay*: the served function, whose graphs replay,
  each replay compared with a direct call of the compiled piece on the same
  inputs (graphs.py).

A piece whose inputs agree with the reference's but whose compiled outputs
differ from its uncompiled ones on them is where a difference arose; a piece
whose inputs already differ got it from earlier.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch

from ..compat.pytree import tree_leaves
from .compare import Difference, copy_inputs, measure, written

# A compiled piece of one graph: (the graph's index in compile order, its name).
PieceKey = tuple[int, str]

MODES = ("serve", "reference", "check", "replay")


@dataclasses.dataclass
class PieceFindings:
    """Everything the check found about one piece, over every size."""

    # Compiled against uncompiled, on the same inputs (written inputs too).
    output: Difference = dataclasses.field(default_factory=Difference)
    # This piece's inputs in the check against those in the reference.
    inputs: Difference = dataclasses.field(default_factory=Difference)
    # A CUDA graph's replay against a direct call of the compiled piece (None:
    # no graph replayed).
    replay: Difference | None = None
    calls: int = 0
    # The dtype of its first floating-point output (its tolerance's).
    dtype: torch.dtype | None = None
    # The inputs of its first call beyond tolerance (passes.py recompiles the
    # piece and runs it on them).
    example: list[Any] | None = None


class Recorder:
    """The run in progress (its mode and size) and each piece's findings."""

    def __init__(self) -> None:
        self.mode = "serve"
        self.size: Any = None
        self.findings: dict[PieceKey, PieceFindings] = {}
        self._calls: dict[PieceKey, int] = {}
        self._reference: dict[tuple[PieceKey, int], list[Any]] = {}
        # What the runs left unchecked, once each, in the order met (the
        # report's notes).
        self.notes: list[str] = []

    def start(self, mode: str, size: Any) -> None:
        """A forward of ``mode`` at ``size`` begins (NOTE: [three runs of one forward])."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        if mode == "reference":
            self._reference.clear()
        self.mode, self.size = mode, size
        self._calls.clear()

    def found(self, key: PieceKey) -> PieceFindings:
        return self.findings.setdefault(key, PieceFindings())

    def enter(self, key: PieceKey, args: Sequence[Any]) -> None:
        """A call of piece ``key``: kept (reference) or compared with the
        reference's call of the same number (check, replay)."""
        n = self._calls.get(key, 0)
        self._calls[key] = n + 1
        if self.mode == "reference":
            self._reference[(key, n)] = copy_inputs(args)
            return
        kept = self._reference.get((key, n))
        if kept is None or self.mode != "check":
            return
        self.found(key).inputs.merge(_written_inputs(args, kept, "input"), self._where)

    @property
    def _where(self) -> str:
        return f" at size {self.size}"

    def compare(
        self,
        key: PieceKey,
        args: Sequence[Any],
        served: Callable[..., Any],
        uncompiled: Callable[..., Any],
        skip: Collection[int],
        writes: bool,
    ) -> Any:
        """One call of the compiled piece ``served`` on ``args`` and of its
        uncompiled form on copies of them; the compiled outputs."""
        found = self.found(key)
        found.calls += 1
        before = copy_inputs(args)
        pristine = copy_inputs(before) if writes else before
        got = served(*args)
        want = uncompiled(*before)
        diff = measure(got, want, "output", skip)
        if not diff.beyond:
            diff.merge(_written_inputs(args, before, "written input"))
        if diff.beyond and found.example is None:
            found.example = pristine
        if found.dtype is None:
            floats = (
                leaf.dtype
                for leaf in tree_leaves(want)
                if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()
            )
            found.dtype = next(floats, None)
        found.output.merge(diff, self._where)
        return got

    def full_graph(self, captured: int) -> None:
        """The replay at this size ran one CUDA graph of the whole forward
        (captured at size ``captured``): no piece's replay was compared."""
        if self.mode != "replay":
            return
        note = (
            f"size {self.size} replayed one full CUDA graph of the forward "
            f"(captured at size {captured}): its pieces' replays were not checked, "
            "only the whole forward against eager"
        )
        if note not in self.notes:
            self.notes.append(note)

    def compare_replay(
        self, key: PieceKey, replayed: Any, direct: Any, skip: Collection[int]
    ) -> None:
        """A CUDA graph's replay against a direct call on the same inputs."""
        found = self.found(key)
        if found.replay is None:
            found.replay = Difference()
        found.replay.merge(measure(replayed, direct, "output", skip), self._where)


def _written_inputs(got: Sequence[Any], want: Sequence[Any], what: str) -> Difference:
    """How the inputs of ``got`` a piece may write differ from those of ``want``,
    each named by its position among all the piece's inputs."""
    positions = written(got)
    diff = measure([got[i] for i in positions], [want[i] for i in positions], what)
    if diff.first.startswith(f"{what} "):
        index, _, detail = diff.first[len(what) + 1 :].partition(" ")
        diff.first = f"{what} {positions[int(index)]} {detail}".rstrip()
    return diff
