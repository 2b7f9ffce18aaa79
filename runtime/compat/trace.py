"""torch's own debugging tools: ``TORCH_TRACE`` artifacts and ``dynamo_timed`` phases.

NOTE: [dynamo_timed across torch releases]
``torch._dynamo.utils.dynamo_timed(key, ...)`` is a context manager that adds
the time spent to ``compile_times()`` and logs a ``chromium_event`` begin/end
pair to the structured trace, which tlparse draws as a timeline.  Its first
argument (the event's name) has kept its place from torch 2.11 to 2.15; the
keywords after it have not (``is_forward`` became ``is_backward``,
``dynamo_compile_runtime_column_us`` went, ``waitcounter_name_override``
came).  :func:`phase` passes only ``log_pt2_compile_event`` and ``metadata``,
and only those the installed release's signature names, so a release that
drops or renames one still times the phase.  A release without
``dynamo_timed`` gets no timeline, and nothing else changes.

Dynamo is imported only when it already is (a backend call) or when the trace
is on: a warm start that loads a saved forward never imports it, and its CUDA
graph capture is timed only under ``TORCH_TRACE``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch


def tracing() -> bool:
    """Whether torch's structured trace is on (``TORCH_TRACE`` or
    ``torch._logging``'s trace handler): ``trace_structured`` writes only then."""
    from torch._logging._internal import trace_log

    return any(not _dormant(h) for h in trace_log.handlers)


def _dormant(handler: object) -> bool:
    """NOTE: [the trace handler torch adds without TORCH_TRACE]
    ``import torch`` adds a ``LazyTraceHandler`` to the trace log even when
    ``TORCH_TRACE`` is unset.  Without a folder it writes nothing and removes
    itself at its first record, outside Meta's own builds (a release has
    ``torch.version.git_version``; ``MAST_HPC_JOB_NAME`` marks theirs).  Until
    some record reaches it, it is there: taken for a trace, it made a warm
    start import Dynamo at its first CUDA graph capture (seen on an H200:
    nothing had written a trace record before the capture's phase)."""
    from torch._logging import _internal

    lazy = getattr(_internal, "LazyTraceHandler", None)
    return (
        lazy is not None
        and isinstance(handler, lazy)
        and getattr(handler, "root_dir", "") is None
        and getattr(handler, "stream", None) is None
        and hasattr(torch.version, "git_version")
        and os.getenv("MAST_HPC_JOB_NAME") is None
    )


def trace_artifact(name: str, encoding: str, payload: Callable[[], str]) -> None:
    """One ``artifact`` entry of the structured trace; ``payload`` runs only when
    the trace is on."""
    torch._logging.trace_structured(
        "artifact",
        metadata_fn=lambda: {"name": name, "encoding": encoding},
        payload_fn=payload,
    )


def phase(name: str, **metadata: object) -> AbstractContextManager[Any]:
    """Time the block as torch's ``dynamo_timed`` event ``name`` (NOTE:
    [dynamo_timed across torch releases])."""
    if "torch._dynamo.utils" not in sys.modules and not tracing():
        return contextlib.nullcontext()
    timed = _dynamo_timed()
    if timed is None:
        return contextlib.nullcontext()
    return timed(name, metadata)


@functools.cache
def _dynamo_timed() -> Callable[[str, dict[str, object]], Any] | None:
    try:
        from torch._dynamo.utils import dynamo_timed
    except ImportError:
        return None
    names = inspect.signature(dynamo_timed).parameters
    fixed = {"log_pt2_compile_event": True} if "log_pt2_compile_event" in names else {}
    takes_metadata = "metadata" in names

    def timed(name: str, metadata: dict[str, object]) -> Any:
        if takes_metadata and metadata:
            return dynamo_timed(name, metadata=dict(metadata), **fixed)
        return dynamo_timed(name, **fixed)

    return timed
