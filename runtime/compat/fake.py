"""Fake tensors: their type, the tracing context's fake mode, and fake propagation.

``import torch`` has imported every module used here already (fake tensors,
the tracing context, the Python dispatcher), in every supported release.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from torch._dispatch.python import enable_python_dispatcher
from torch._guards import TracingContext, detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

__all__ = [
    "FakeTensor",
    "FakeTensorMode",
    "detect_fake_mode",
    "fake_mode_of",
    "propagating",
    "shape_env_of",
    "tracing_fake_mode",
]


def tracing_fake_mode() -> Any:
    """The fake mode of the ambient TracingContext (None outside a backend call)."""
    context = TracingContext.try_get()
    return context.fake_mode if context is not None else None


def tracing(fake_mode: Any) -> contextlib.AbstractContextManager[Any]:
    """A tracing context over ``fake_mode``, as a backend call has one (a
    spawned compile worker's compiles read it)."""
    from torch._guards import tracing as _tracing

    return _tracing(TracingContext(fake_mode))


def fake_mode_of(values: Sequence[Any]) -> Any:
    """The fake mode of the first fake tensor in ``values`` (None if there is none)."""
    return next((v.fake_mode for v in values if isinstance(v, FakeTensor)), None)


def shape_env_of(values: Sequence[Any]) -> Any:
    """The ShapeEnv of ``values``' fake mode, else the tracing context's (or None)."""
    mode = fake_mode_of(values) or tracing_fake_mode()
    return getattr(mode, "shape_env", None)


@contextlib.contextmanager
def propagating(fake_mode: Any) -> Iterator[None]:
    """Run ops over fake tensors as Dynamo and AOTAutograd do.

    NOTE: [fake propagation runs under the Python dispatcher]
    Dynamo and AOTAutograd trace under the Python dispatcher, which routes ops
    through their Python decompositions and meta functions (symbolic-size
    aware).  Without it, torch 2.11's ``linear`` on symbolic fakes reads a
    concrete size and adds ``Eq(s27, 7)`` to the ShapeEnv: every
    ``dynamic=True`` graph was silently fixed to one length.  Later releases
    did not guard there, but running as Dynamo runs is what keeps the fakes'
    guards the ones Dynamo already has.

    NOTE: [fake propagation binds no unbacked symbol]
    A piece that reads a tensor made by another piece with ``.item()`` gets a
    fresh unbacked symbol here, bound to no node of any graph; left pending, it
    would fail the next trace in this ShapeEnv (the piece's own compile).
    """
    shape_env = fake_mode.shape_env
    ignore = (
        shape_env.ignore_fresh_unbacked_symbols()
        if shape_env is not None
        else contextlib.nullcontext()
    )
    with fake_mode, enable_python_dispatcher(), ignore:
        yield
