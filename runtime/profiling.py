"""Per-piece profiles: where each forward's time goes, piece by piece.

NOTE: [what a profile counts]
A backend given a :class:`Profiler` runs the profiling variant of the emitted
source (``generate_execution_code(..., profile=True)``): the serving source with
every piece call between ``__stitch_ranges__.begin(piece, path)`` and ``.end()``
and the whole function between ``begin_forward()`` and ``end_forward()``.  The
serving source itself is unchanged and pays nothing.  For each forward the
caller times the call of the compiled model (``Profiler.call``); from the three
clocks a forward's time splits into:

- each compiled piece and each splitting op (attention), timed around its call
  (on CUDA after a synchronize on both sides, so a piece's kernels count as its
  own; this serializes the GPU, as any per-op profile does);
- *stitching*: the emitted function minus its piece calls (binding pieces,
  unpacking, ``del``, the hoisted dispatch);
- *guards and frame*: the model call minus the emitted function (Dynamo's guard
  check, its frame and the bytecode before and after the graph; for a saved
  forward, the forward's own bytecode).

Input copies that a piece makes (restriding an eager output for a compiled
consumer, copying into a CUDA graph's static inputs) happen inside the piece's
runnable and count as that piece.  While a ``torch.profiler`` session runs,
every range is also a ``record_function`` named ``<piece> <module path>``, so
its trace shows the pieces by name.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

__all__ = ["PieceRanges", "Profile", "ProfileRow", "Profiler"]


@dataclasses.dataclass
class _SizeStats:
    forwards: int = 0
    calls: int = 0
    call_ns: int = 0
    stitched_ns: int = 0
    # (graph, piece) -> total ns inside its calls
    pieces: dict[tuple[int, str], int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PieceInfo:
    """What a report says of one piece: its kind and the modules it covers."""

    kind: str  # "compiled" or "splitting"
    path: str


class Profiler:
    """Collects per-piece times of the forwards run by a profiling backend.

    ``StitchBackend(config, profiler=Profiler())``; set :attr:`size` to the label
    the next forwards count under (a token count, a sequence length), and time
    each call of the compiled model with :meth:`call`.
    """

    def __init__(self, synchronize: bool | None = None) -> None:
        self.size: Any = None
        # None: synchronize CUDA around each range when CUDA is initialized.
        self.synchronize = synchronize
        self.pieces: dict[tuple[int, str], PieceInfo] = {}
        self._stats: dict[Any, _SizeStats] = {}
        self._graphs = 0

    def ranges(self, pieces: Iterable[tuple[str, bool, str]]) -> PieceRanges:
        """The ``__stitch_ranges__`` of one backend call's profiling variant;
        ``pieces``: (name, is splitting, module path) of each of its pieces."""
        graph = self._graphs
        self._graphs += 1
        for name, splitting, path in pieces:
            kind = "splitting" if splitting else "compiled"
            self.pieces[(graph, name)] = PieceInfo(kind, path)
        return PieceRanges(self, graph, self._synchronizes())

    def variant(
        self,
        split_gm: Any,
        dispatch_on: str | None,
        pieces: Iterable[tuple[str, bool, str]],
    ) -> tuple[str, list[Any], PieceRanges]:
        """The profiling variant of ``split_gm``'s source, its constants and the
        ranges it is bound to (see :meth:`ranges`)."""
        from stitch.codegen import generate_execution_code

        code, _, consts = generate_execution_code(
            split_gm, dispatch_on=dispatch_on, profile=True
        )
        return code, consts, self.ranges(pieces)

    def _synchronizes(self) -> bool:
        if self.synchronize is not None:
            return self.synchronize
        return torch.cuda.is_available() and torch.cuda.is_initialized()

    def stats(self) -> _SizeStats:
        return self._stats.setdefault(self.size, _SizeStats())

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, timed as one forward of the current size."""
        stats = self.stats()
        start = time.perf_counter_ns()
        result = fn(*args, **kwargs)
        if self._synchronizes():
            torch.cuda.synchronize()
        stats.call_ns += time.perf_counter_ns() - start
        stats.calls += 1
        return result

    def reset(self) -> None:
        """Forget the times measured so far (after a warm-up); keep the pieces."""
        self._stats.clear()

    def profile(self) -> Profile:
        return Profile.build(self._stats, self.pieces)


class PieceRanges:
    """``__stitch_ranges__``: what a profiling variant calls around its pieces."""

    __slots__ = (
        "_profiler",
        "_graph",
        "_sync",
        "_stats",
        "_t0",
        "_f0",
        "_piece",
        "_rf",
    )

    def __init__(self, profiler: Profiler, graph: int, synchronize: bool) -> None:
        self._profiler = profiler
        self._graph = graph
        self._sync = synchronize
        # Set by begin_forward: building the ranges (at compile time) records
        # no forward, so it must not add an empty row for the current size.
        self._stats = _SizeStats()
        self._t0 = self._f0 = 0
        self._piece = ""
        self._rf: Any = None

    def begin_forward(self) -> None:
        self._stats = self._profiler.stats()
        self._f0 = time.perf_counter_ns()

    def end_forward(self) -> None:
        stats = self._stats
        stats.stitched_ns += time.perf_counter_ns() - self._f0
        stats.forwards += 1

    def begin(self, piece: str, path: str) -> None:
        if torch.autograd.profiler._is_profiler_enabled:
            self._rf = torch._C._profiler._RecordFunctionFast(f"{piece} {path}".strip())
            self._rf.__enter__()
        if self._sync:
            torch.cuda.synchronize()
        self._piece = piece
        self._t0 = time.perf_counter_ns()

    def end(self) -> None:
        if self._sync:
            torch.cuda.synchronize()
        elapsed = time.perf_counter_ns() - self._t0
        key = (self._graph, self._piece)
        pieces = self._stats.pieces
        pieces[key] = pieces.get(key, 0) + elapsed
        if self._rf is not None:
            self._rf.__exit__(None, None, None)
            self._rf = None


@dataclasses.dataclass(frozen=True)
class ProfileRow:
    """One line of a profile: a piece, or a total (kind "total" / "overhead")."""

    name: str
    kind: str
    path: str
    us: float  # microseconds per forward

    def share(self, total_us: float) -> float:
        return 100.0 * self.us / total_us if total_us > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class SizeProfile:
    size: Any
    forwards: int
    pieces: tuple[ProfileRow, ...]
    summary: tuple[ProfileRow, ...]  # compiled, splitting, stitching, guards
    total_us: float


@dataclasses.dataclass(frozen=True)
class Profile:
    sizes: tuple[SizeProfile, ...]

    @classmethod
    def build(
        cls, stats: dict[Any, _SizeStats], pieces: dict[tuple[int, str], PieceInfo]
    ) -> Profile:
        graphs_used = {g for s in stats.values() for g, _ in s.pieces}
        out = []
        for size in sorted(stats, key=lambda s: (str(type(s)), s)):
            st = stats[size]
            n = max(st.forwards, 1)
            rows = []
            for (graph, name), ns in st.pieces.items():
                info = pieces.get((graph, name), PieceInfo("compiled", ""))
                label = name if len(graphs_used) == 1 else f"g{graph}.{name}"
                rows.append(ProfileRow(label, info.kind, info.path, ns / n / 1e3))
            compiled = sum(r.us for r in rows if r.kind == "compiled")
            splitting = sum(r.us for r in rows if r.kind == "splitting")
            stitched = st.stitched_ns / n / 1e3
            call = st.call_ns / st.calls / 1e3 if st.calls else stitched
            summary = (
                ProfileRow("compiled pieces", "total", "", compiled),
                ProfileRow("splitting ops", "total", "", splitting),
                ProfileRow(
                    "stitching", "overhead", "", max(stitched - compiled - splitting, 0)
                ),
                ProfileRow("guards and frame", "overhead", "", max(call - stitched, 0)),
            )
            out.append(SizeProfile(size, st.forwards, tuple(rows), summary, call))
        return cls(tuple(out))

    def table(self) -> str:
        """A Markdown table per size: every piece, then the totals."""
        from .tables import markdown_table

        lines: list[str] = []
        for sp in self.sizes:
            lines.append(
                f"size {sp.size}: {sp.total_us:.1f} us per forward "
                f"({sp.forwards} forwards)"
            )
            lines.append("")
            rows = [
                (
                    f"**{r.name}**" if r.kind in ("total", "overhead") else r.name,
                    r.kind,
                    r.path or "-",
                    f"{r.us:.1f}",
                    f"{r.share(sp.total_us):.1f}%",
                )
                for r in (*sp.pieces, *sp.summary)
            ]
            headers = ("piece", "kind", "modules", "us/forward", "share")
            lines.append(markdown_table(headers, rows, align="lllrr"))
            lines.append("")
        return "\n".join(lines)

    def html(self, title: str) -> str:
        """A self-contained page: one stacked bar per size, one segment per piece."""
        return render_page(self, title)


# -- the HTML page --------------------------------------------------------------
# Python decides every position, width, colour and label (page_context);
# templates/profile_chart.html.j2 only loops over them and writes the markup.

TEMPLATE = "profile_chart.html.j2"
COLORS = {"compiled": "#4c78a8", "splitting": "#f58518", "overhead": "#b8b8b8"}
OTHER_COLOR = "#999"
# The chart's geometry, in pixels: the whole width, one bar's height, the
# distance between bars, the left margin (the size labels end there) and the
# first bar's top.
WIDTH, BAR, GAP, LEFT, TOP = 900, 28, 44, 90, 30
RIGHT_MARGIN = 20


@dataclasses.dataclass(frozen=True)
class Segment:
    x: str
    width: str
    color: str
    tip: str  # the hover text: name, kind, modules, time and share


@dataclasses.dataclass(frozen=True)
class Bar:
    label: str
    label_x: int
    y: int
    height: int
    text_y: str
    segments: tuple[Segment, ...]
    total: str
    total_x: str


@dataclasses.dataclass(frozen=True)
class LegendItem:
    kind: str
    color: str


def page_context(profile: Profile, title: str) -> dict[str, object]:
    """What the template is given: one bar per size, every number formatted."""
    longest = max((sp.total_us for sp in profile.sizes), default=1.0) or 1.0
    scale = (WIDTH - LEFT - RIGHT_MARGIN) / longest
    bars = []
    y = TOP
    for sp in profile.sizes:
        x = float(LEFT)
        segments = []
        # The pieces, then what is spent between and around them.
        for r in (*sp.pieces, *(r for r in sp.summary if r.kind == "overhead")):
            w = scale * r.us
            tip = f"{r.name} ({r.kind}) {r.path}: {r.us:.1f} us, "
            tip += f"{r.share(sp.total_us):.1f}%"
            color = COLORS.get(r.kind, OTHER_COLOR)
            segments.append(Segment(f"{x:.2f}", f"{max(w, 0):.2f}", color, tip))
            x += w
        bars.append(
            Bar(
                label=str(sp.size),
                label_x=LEFT - 8,
                y=y,
                height=BAR,
                text_y=f"{y + BAR * 0.7:.0f}",
                segments=tuple(segments),
                total=f"{sp.total_us:.0f} us",
                total_x=f"{x + 6:.0f}",
            )
        )
        y += GAP
    return {
        "title": title,
        "legend": [LegendItem(kind, color) for kind, color in COLORS.items()],
        "width": WIDTH,
        "height": y + 10,
        "bars": bars,
        "table": profile.table(),
    }


def render_page(profile: Profile, title: str) -> str:
    """The self-contained page; the template escapes every text it is given."""
    from stitch.codegen.emit import template_environment

    template = template_environment().get_template(TEMPLATE)
    return template.render(**page_context(profile, title))


def piece_list(reports: Sequence[Any]) -> list[tuple[str, bool, str]]:
    """(name, is splitting, module path) of each piece of a backend call's reports."""
    return [(r.name, r.splitting, r.module_path) for r in reports]
