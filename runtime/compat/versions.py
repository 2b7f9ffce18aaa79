"""Which torch releases Stitch supports, and what each one gives.

NOTE: [supported torch releases]
Stitch supports torch 2.11 (the GPU image's) through 2.15 (the newest release
when the range was last widened); ``pyproject.toml`` states the same range and
``.ci/torch_versions.sh`` tests both ends.  Differences that change what a user
gets are listed in :data:`FEATURES` and in docs/torch_versions.md (a table the
tests check against what each release actually does).  Widening the range: run
``.ci/torch_versions.sh`` with the new release, read the compat modules'
version notes, then change :data:`NEWEST`, ``pyproject.toml`` and the docs.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re

import torch

log = logging.getLogger("stitch")

OLDEST = (2, 11)
NEWEST = (2, 15)


def parse(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a release's version string (torch's ``2.11.0+cu130``
    -> ``(2, 11)``; transformers' too)."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        raise ValueError(f"not a release version: {version!r}")
    return int(found.group(1)), int(found.group(2))


TORCH = parse(torch.__version__)


def supported_range() -> str:
    return f"{OLDEST[0]}.{OLDEST[1]} to {NEWEST[0]}.{NEWEST[1]}"


@functools.cache
def check_supported() -> bool:
    """Warn once when this torch is outside the supported range; whether it is inside."""
    inside = OLDEST <= TORCH <= NEWEST
    if not inside:
        log.warning(
            "stitch: torch %s is outside the supported range (%s); "
            "Stitch leans on torch internals that may differ in this release",
            torch.__version__,
            supported_range(),
        )
    return inside


def gpu_fingerprint(device: int) -> str:
    """What a cubin depends on: the GPU model and architecture, CUDA and Triton."""
    props = torch.cuda.get_device_properties(device)
    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = "none"
    return (
        f"{props.name} sm_{props.major}{props.minor} "
        f"cuda {torch.version.cuda} triton {triton_version}"
    )
