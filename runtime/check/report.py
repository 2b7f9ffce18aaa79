"""What the check found: a row per piece, the whole forward per size, and the
verdict that names the first piece beyond tolerance."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..tables import markdown_table
from .compare import Difference


@dataclasses.dataclass
class PieceResult:
    """One compiled piece, over every size the check ran."""

    graph: int
    name: str
    # The modules it covers ("layers.0.self_attn .. layers.1.self_attn").
    modules: str
    # Its call's lines in the stitching source (None: not found there).
    lines: tuple[int, int] | None
    source_file: str
    calls: int
    dtype: str
    rtol: float
    atol: float
    # Compiled against uncompiled on the same inputs; this piece's inputs
    # against the uncompiled run's; a CUDA graph replay against a direct call.
    output: Difference
    inputs: Difference
    replay: Difference | None = None
    # Which configured Inductor pass makes the difference (passes.py), said
    # in a sentence; "" when not searched.
    passes: str = ""

    @property
    def label(self) -> str:
        return self.name if self.graph == 0 else f"graph {self.graph + 1} {self.name}"

    @property
    def beyond(self) -> bool:
        replay = self.replay is not None and self.replay.beyond
        return self.output.beyond or self.inputs.beyond or replay

    @property
    def arose_inside(self) -> bool:
        """Whether the difference arose in this piece (its inputs agree with
        the uncompiled run's) rather than before it."""
        return not self.inputs.beyond

    def where(self) -> str:
        if self.lines is None:
            return f"in {self.source_file}"
        first, last = self.lines
        return f"lines {first}-{last} of {self.source_file}"


@dataclasses.dataclass
class ForwardResult:
    """The whole forward at one size against the model run eagerly."""

    size: Any
    # The stitched function on uncompiled pieces, and on compiled ones.
    reference: Difference
    compiled: Difference
    # The served function with its CUDA graphs (None: no graphs).
    replayed: Difference | None = None


@dataclasses.dataclass
class CheckReport:
    pieces: list[PieceResult]
    forwards: list[ForwardResult]
    # What was not checked (a size whose replay ran one full CUDA graph, so
    # no piece's replay was compared); :meth:`verdict` ends with them.
    notes: list[str] = dataclasses.field(default_factory=list)
    # Each edited stitching file that ran (stitching_source), and its unified
    # diff from the emitted source.
    edits: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def first(self) -> PieceResult | None:
        """The first piece beyond tolerance in graph order (None: none is)."""
        return next((p for p in self.pieces if p.beyond), None)

    @property
    def stitching_differs(self) -> bool:
        """Whether the stitched function differs from eager with every piece
        uncompiled: the split or the stitching, not a compiled piece."""
        return any(f.reference.beyond for f in self.forwards)

    @property
    def ok(self) -> bool:
        whole = any(
            f.compiled.beyond or (f.replayed is not None and f.replayed.beyond)
            for f in self.forwards
        )
        return self.first is None and not self.stitching_differs and not whole

    def table(self) -> str:
        """A row per piece, in graph order."""
        graphs = any(p.replay is not None for p in self.pieces)
        headers = [
            "piece",
            "modules",
            "lines",
            "tolerance",
            "max abs err",
            "max rel err",
            "input abs err",
        ]
        headers += ["replay abs err"] if graphs else []
        headers += ["first difference", "ok"]
        rows = []
        for p in self.pieces:
            row = [
                p.label,
                p.modules or "-",
                f"{p.lines[0]}-{p.lines[1]}" if p.lines else "-",
                f"{p.dtype} {p.rtol:.0e}/{p.atol:.0e}",
                f"{p.output.abs:.2e}",
                f"{p.output.rel:.2e}",
                f"{p.inputs.abs:.2e}",
            ]
            if graphs:
                row.append(f"{p.replay.abs:.2e}" if p.replay is not None else "-")
            first = p.output.first or (p.replay.first if p.replay else "")
            first = first or (f"input: {p.inputs.first}" if p.inputs.first else "")
            row += [first or "-", "NO" if p.beyond else "yes"]
            rows.append(row)
        align = "lll" + "l" + "rrr" + ("r" if graphs else "") + "ll"
        return markdown_table(headers, rows, align=align)

    def forward_table(self) -> str:
        """Per size, the whole forward against eager."""
        graphs = any(f.replayed is not None for f in self.forwards)
        headers = ["size", "uncompiled pieces vs eager", "compiled vs eager"]
        headers += ["CUDA graphs vs eager"] if graphs else []
        rows = []
        for f in self.forwards:
            row = [str(f.size), _cell(f.reference), _cell(f.compiled)]
            if graphs:
                row.append(_cell(f.replayed) if f.replayed is not None else "-")
            rows.append(row)
        return markdown_table(headers, rows, align="r" + "r" * (len(headers) - 1))

    def verdict(self) -> str:
        """What the check concludes, in a few sentences, then what it did not
        check (``note: ...``, a line each)."""
        notes = [f"note: {note}" for note in self.notes]
        return "\n".join([self._conclusion(), *notes])

    def _conclusion(self) -> str:
        if self.first is not None:
            return "\n".join(_first_piece(self.first))
        if self.stitching_differs and self.edits:
            return "\n".join(_edited_conclusion(self.edits))
        if self.stitching_differs:
            return (
                "no compiled piece differs from its uncompiled form, but the "
                "stitched function with every piece uncompiled already differs "
                "from eager: the split or the stitching source changed the "
                "numbers, not a compiled piece"
            )
        if not self.ok:
            return (
                "no piece is beyond its tolerance, but the whole forward is: "
                "small differences of several pieces add up"
            )
        return "every piece agrees with its uncompiled form within tolerance"


def _edited_conclusion(edits: list[tuple[str, str]]) -> list[str]:
    files = ", ".join(path for path, _ in edits)
    lines = [
        "no compiled piece differs from its uncompiled form, but the stitched "
        "function with every piece uncompiled already differs from eager: the "
        f"difference arose in the stitching source, the edited {files}"
    ]
    for path, diff in edits:
        if diff:
            lines.append(f"where {path} differs from the emitted source:")
            lines.append(diff.rstrip("\n"))
        else:
            lines.append(f"{path} is the emitted source, unchanged: look at the split")
    return lines


def _cell(diff: Difference) -> str:
    return f"{diff.abs:.2e}" + (" NO" if diff.beyond else "")


def _first_piece(p: PieceResult) -> list[str]:
    modules = f" ({p.modules})" if p.modules else ""
    lines = [f"first piece beyond tolerance: {p.label}{modules}, {p.where()}"]
    if p.replay is not None and p.replay.beyond:
        lines.append(
            f"  its CUDA graph replay differs from a direct call of the compiled "
            f"piece on the same inputs: {p.replay.first}, by up to "
            f"{p.replay.abs:.3g}; the graph replays on moved or stale inputs "
            "(cudagraph_check_addresses=True names the argument)"
        )
    if p.output.beyond:
        lines.append(
            f"  on the same inputs its compiled form differs from its uncompiled "
            f"GraphModule: {p.output.first}, by up to {p.output.abs:.3g} "
            f"(relative {p.output.rel:.3g}; tolerance rtol {p.rtol:g}, atol "
            f"{p.atol:g} for {p.dtype})"
        )
    if p.arose_inside:
        lines.append(
            "  the difference arose inside it: its inputs agree with those of "
            f"the run on uncompiled pieces (largest difference {p.inputs.abs:.3g})"
        )
    else:
        lines.append(
            "  the difference came from earlier: its inputs already differ from "
            f"those of the run on uncompiled pieces ({p.inputs.first}, by up to "
            f"{p.inputs.abs:.3g}), though every compiled piece before it agrees "
            "with its uncompiled form: look at what runs between the pieces "
            "(the splitting ops, the stitching source)"
        )
    if p.passes:
        lines.append(f"  {p.passes}")
    return lines
