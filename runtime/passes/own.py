"""Stitch's own passes, run on every piece (NOTE: [Stitch's own passes run on
every piece], post_grad_hook.py), and the part of every compile key they make."""

from __future__ import annotations

import hashlib

from .base import pass_uuid
from .residual_addmm import UnfuseResidualAddmm

# As classes: each adapter makes objects of its own.
STITCH_PASSES: tuple[type, ...] = (UnfuseResidualAddmm,)


def own_passes_key() -> str:
    """A short hash of Stitch's own passes: it enters every Inductor piece's
    compile key, so that a piece compiled before a pass changed (or before it
    existed) is compiled again rather than loaded."""
    uuids = "".join(pass_uuid(cls()) for cls in STITCH_PASSES)
    return hashlib.sha256(uuids.encode()).hexdigest()[:16]
