"""A profile's HTML page: the numbers of its chart, laid out by a template.

Python decides every position, width, colour and label (:func:`page_context`);
``templates/profile_chart.html.j2`` only loops over them and writes the markup.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .profiling import Profile

__all__ = ["TEMPLATE", "page_context", "render_page"]

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
