"""The tiered start's controls: what callers outside the pipeline (the
engines' integrations, ``stitch check``, the command line, the saved
forward) use of it.

The backend's own entry is ``pipeline/api.py``; these two are the
pipeline's public faces (the architecture test checks that nothing outside
imports past them).
"""

from __future__ import annotations

from ...workers.exit_wait import finish_before_exit, land_before_exit, wait_compiled
from ...workers.worker_cpus import allow_parents as allow_parents_cpus
from .deferred import DEFAULT_ENV as TIERED_DEFAULT_ENV
from .deferred import asks_tiered
from .pool_choice import pool_for
from .swap_check import SWAP_TOLERANCE, tolerance, unset_outputs
from .tier import Tier

__all__ = [
    "SWAP_TOLERANCE",
    "TIERED_DEFAULT_ENV",
    "Tier",
    "allow_parents_cpus",
    "asks_tiered",
    "finish_before_exit",
    "land_before_exit",
    "pool_for",
    "tolerance",
    "unset_outputs",
    "wait_compiled",
]
