"""The compile pipeline's public entry: what the saved forward, the engines' integrations and the command line use.

Everything outside ``runtime/pipeline/`` imports the pipeline from here, so
its modules can change without those callers (the architecture test checks it).
"""

from __future__ import annotations

from stitch.codegen.pieces import mutates

from ..workers.worker_cpus import allow_parents as allow_parents_cpus
from .artifact_source import ArtifactSource, config_adapter
from .backend import CompiledModel, StitchBackend, stitch_backend
from .graph_inputs import GraphInput
from .inductor_warmup import start_inductor_warmup
from .piecewise import PiecewiseBackend
from .saved_function import (
    StitchFunction,
    index_sha256,
    load_reference,
    parse_reference,
    reference_entry,
    reference_root,
)
from .splitting import dispatches_through_transformers, is_attention
from .tiered.deferred import DEFAULT_ENV as TIERED_DEFAULT_ENV
from .tiered.deferred import asks_tiered
from .tiered.exit_wait import finish_before_exit, land_before_exit, wait_compiled
from .tiered.spawned_pool import SpawnedPool
from .tiered.swap_check import SWAP_TOLERANCE, tolerance, unset_outputs
from .tiered.tier import Tier

__all__ = [
    "ArtifactSource",
    "CompiledModel",
    "GraphInput",
    "PiecewiseBackend",
    "SWAP_TOLERANCE",
    "SpawnedPool",
    "StitchBackend",
    "StitchFunction",
    "TIERED_DEFAULT_ENV",
    "Tier",
    "allow_parents_cpus",
    "asks_tiered",
    "config_adapter",
    "dispatches_through_transformers",
    "finish_before_exit",
    "index_sha256",
    "land_before_exit",
    "is_attention",
    "load_reference",
    "mutates",
    "parse_reference",
    "reference_entry",
    "reference_root",
    "start_inductor_warmup",
    "stitch_backend",
    "tolerance",
    "unset_outputs",
    "wait_compiled",
]
