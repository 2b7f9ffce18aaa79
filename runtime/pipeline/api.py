"""The compile pipeline's public entry: the backend, what the saved forward,
the engines' integrations and the command line use of it.

Everything outside ``runtime/pipeline/`` imports the pipeline from here, or
the tiered start's controls from ``tiered/controls.py``, so its modules can change
without those callers (the architecture test checks it).
"""

from __future__ import annotations

from stitch.codegen.pieces import mutates

from .artifact_source import ArtifactSource, config_adapter
from .backend import CompiledModel, StitchBackend, stitch_backend
from .graph_inputs import GraphInput
from .inductor_warmup import start_inductor_warmup
from .piecewise import PiecewiseBackend
from .saved_function import StitchFunction, load_reference, reference_root
from .saved_reference import index_sha256, parse_reference, reference_entry
from .split_warnings import dispatches_through_transformers, is_attention

__all__ = [
    "ArtifactSource",
    "CompiledModel",
    "GraphInput",
    "PiecewiseBackend",
    "StitchBackend",
    "StitchFunction",
    "config_adapter",
    "dispatches_through_transformers",
    "index_sha256",
    "is_attention",
    "load_reference",
    "mutates",
    "parse_reference",
    "reference_entry",
    "reference_root",
    "start_inductor_warmup",
    "stitch_backend",
]
