"""The spawned pool a backend holds for its tiered starts: how many workers,
what they run, and whether they start when the backend is made
(NOTE: [pre-started compile workers], runtime/workers/spawned_pool.py).
"""

from __future__ import annotations

import os

import torch

from ...config import CompilationConfig
from ...workers.priority import niceness
from ...workers.spawned_pool import SpawnedPool
from ...workers.start_method import START_ENV
from ...workers.worker_cpus import default_workers
from .deferred import DEFAULT_ENV

# What a spawned compile worker runs (its main, and the fork server's preparation).
WORKER_MODULE = "stitch.runtime.pipeline.tiered.spawned_workers"


def pool_for(config: CompilationConfig) -> SpawnedPool:
    """The pool of a backend made with ``config``, started now where its
    tiered start will spawn its workers (``likely_spawned``)."""
    count = config.compile_workers or default_workers(4)
    pool = SpawnedPool(count, niceness(), module=WORKER_MODULE)
    if likely_spawned(config):
        pool.start(cpu=not torch.cuda.is_available())
    return pool


def likely_spawned(config: CompilationConfig) -> bool:
    """Whether a backend made with ``config`` will spawn its tiered start's
    workers, as far as can be told before a graph comes: ``$STITCH_COMPILE_START``
    says spawn, or this process has CUDA (NOTE: [forked or spawned compile
    workers]); a graph that proves otherwise leaves the pool idle, to go.
    Where ``tiered_start`` is left to the default, a process with CUDA is
    taken to compile for the GPU, where the default is off (NOTE: [where a
    tiered start is the default])."""
    asked = config.tiered_start
    if asked is False or config.backend != "inductor" or config.disable_cache:
        return False
    if asked is None and (
        torch.cuda.is_available() or os.environ.get(DEFAULT_ENV, "").strip() == "0"
    ):
        return False
    method = os.environ.get(START_ENV, "").strip().lower()
    if method in ("fork", "spawn"):
        return method == "spawn"
    return torch.cuda.is_available() or not hasattr(os, "fork")
