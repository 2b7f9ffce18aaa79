"""The pass interface: a callable on an ``fx.Graph`` plus a ``uuid()`` naming its code and options.

A pass is any object with ``__call__(graph: torch.fx.Graph) -> None`` (it rewrites
the graph in place) and ``uuid() -> str``.  The uuid enters the compile cache key:
two passes with the same uuid must make the same rewrite.  :class:`InductorPass`
gives a uuid from the source of the pass's class and its :meth:`options`, so an
edit to the pass or a change of option recompiles, and nothing else does.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import torch.fx as fx

from stitch.core.errors import StitchRuntimeError


class InductorPassError(StitchRuntimeError):
    """A configured Inductor pass raised while rewriting a piece's graph."""

    def __init__(self, name: str, uuid: str, cause: BaseException) -> None:
        super().__init__(
            f"Inductor pass {name} (uuid {uuid[:12]}) failed: "
            f"{type(cause).__name__}: {cause}"
        )
        self.pass_name = name
        self.pass_uuid = uuid


class InductorPass:
    """Base class of a post-grad pass; subclasses implement :meth:`__call__`.

    Override :meth:`options` to return every setting the rewrite depends on (a
    dict of plain values); the default :meth:`uuid` hashes them with the source
    of the class (and its bases up to this one).
    """

    def __call__(self, graph: fx.Graph) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement __call__")

    def options(self) -> dict[str, Any]:
        return {}

    def uuid(self) -> str:
        parts = [class_source(cls) for cls in type(self).__mro__ if _is_pass_class(cls)]
        parts.append(repr(sorted(self.options().items())))
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options().items()))
        return f"{type(self).__name__}({options})"


def _is_pass_class(cls: type) -> bool:
    return (
        cls is not object and cls is not InductorPass and issubclass(cls, InductorPass)
    )


def class_source(cls: type) -> str:
    """The source of ``cls`` (its qualified name where the source cannot be read)."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return f"{cls.__module__}.{cls.__qualname__}"


def pass_name(p: Any) -> str:
    """How errors and logs name a pass: its ``name`` attribute, else its class."""
    name = getattr(p, "name", None)
    if isinstance(name, str) and name:
        return name
    return type(p).__qualname__


def pass_uuid(p: Any) -> str:
    """``p.uuid()``, checked to be a non-empty string."""
    uuid = getattr(p, "uuid", None)
    if not callable(uuid):
        raise TypeError(f"{pass_name(p)} has no uuid() method")
    value = uuid()
    if not isinstance(value, str) or not value:
        raise TypeError(
            f"{pass_name(p)}.uuid() returned {value!r}, not a non-empty str"
        )
    return value
