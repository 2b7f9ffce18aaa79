"""The progress bar shown while compiling pieces and capturing CUDA graphs."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, desc: str, unit: str, *, enabled: bool) -> Any:
    """A tqdm bar over ``total`` steps; a disabled one is a silent no-op."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not enabled)
