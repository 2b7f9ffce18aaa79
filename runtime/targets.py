"""Shape targets: what one compiled runnable of a piece is for (general, a range, a size)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import CompileSettings


@dataclasses.dataclass(frozen=True)
class Target:
    """What one compiled runnable is for: the general shape, a range or a size."""

    kind: str  # "general" | "range" | "size"
    lo: int = 0
    hi: int = 0

    @property
    def static(self) -> bool:
        return self.kind == "size"

    def describe(self) -> str:
        if self.kind == "general":
            return "general"
        if self.kind == "size":
            return f"size {self.lo}"
        return f"range [{self.lo}, {self.hi}]"

    def key(self) -> str:
        return {"general": "general", "size": f"size{self.lo}"}.get(
            self.kind, f"range{self.lo}-{self.hi}"
        )


def targets_for(
    compile_sizes: Sequence[int], ranges: Sequence[tuple[int, int]], dynamic: bool
) -> list[Target]:
    """Every target a piece is compiled for (one, if it has no SymInt argument)."""
    if not dynamic:
        return [Target("general")]
    return (
        [Target("general")]
        + [Target("range", lo, hi) for lo, hi in ranges]
        + [Target("size", s, s) for s in compile_sizes]
    )


def targets_by_key(settings: CompileSettings, dynamic: bool) -> dict[str, Target]:
    """The compile settings' targets for a piece (``dynamic``: it has a size argument),
    by :meth:`Target.key`, the name the cache index records them under."""
    targets = targets_for(settings.compile_sizes, settings.compile_ranges(), dynamic)
    return {t.key(): t for t in targets}
