"""Stitch as a vLLM compile backend (the ``vllm`` extra; the core never imports it).

A vLLM user writes::

    llm = LLM(model=..., compilation_config={"mode": 2, "backend": "stitch.runtime.vllm.backend"})

(``"backend": "stitch_vllm"`` names the same object through torch's backend
registry).  Mode 2 (``DYNAMO_TRACE_ONCE``) hands the whole Dynamo graph to the
backend; Stitch splits it at vLLM's attention and mixer ops, compiles the pieces
with Inductor under ``<VLLM_CACHE_ROOT>/stitch`` (or ``$STITCH_CACHE_DIR``) and
returns a function vLLM's AOT path saves and loads warm.  Other
``CompilationConfig`` fields: ``$STITCH_VLLM_CONFIG`` (JSON) or
:func:`backend_with` (see ``config_from_vllm.py``).
"""

from typing import Any

from .compiler import (
    StitchVllmBackend,
    VllmStitchFunction,
    backend_with,
    current_vllm_config,
)
from .config_from_vllm import (
    CONFIG_ENV,
    stitch_cache_root,
    stitch_config,
    vllm_splitting_ops,
)


def __getattr__(name: str) -> Any:
    # ``backend``: a new StitchVllmBackend per lookup, holding the engine config
    # current when vLLM resolves the name (see NOTE: [the engine's config is
    # taken when vLLM resolves the name] in compiler.py).
    if name == "backend":
        return StitchVllmBackend(current_vllm_config())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONFIG_ENV",
    "StitchVllmBackend",
    "VllmStitchFunction",
    "backend",
    "backend_with",
    "stitch_cache_root",
    "stitch_config",
    "vllm_splitting_ops",
]
