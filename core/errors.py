"""The one error hierarchy of the project.

Every condition a user can reach raises a subclass of :class:`StitchError` whose
message names the node, piece, field or file involved and the offending value.
"""

from __future__ import annotations

from typing import Any


class StitchError(Exception):
    """Base class of every error Stitch raises on purpose."""


class StitchCodegenError(StitchError):
    """The graph cannot be split or lowered to stitching source."""

    def __init__(self, message: str, node: Any = None) -> None:
        if node is not None:
            message = f"{message} [node {describe_node(node)}]"
        super().__init__(message)
        self.node = node


class StitchLoadError(StitchError):
    """Emitted source cannot be loaded or bound to its pieces."""


class StitchConfigError(StitchError, ValueError):
    """A configuration field holds a value Stitch cannot use."""


class StitchModelError(StitchError, ValueError):
    """A model the user named cannot be loaded, called or traced: a checkpoint
    folder (``--model``), a module's factory (``--module``) or the model they
    give.  The message names the folder, file, module or model and the reason,
    never only a traceback from deep inside transformers or Dynamo."""


class StitchCacheError(StitchError):
    """A cache entry is unusable (the runtime recovers from these)."""


class StitchRuntimeError(StitchError, RuntimeError):
    """Something went wrong while running compiled or captured code."""


class StitchInputError(StitchError, ValueError):
    """A saved forward was given an input it cannot run: the message names the
    argument by the forward's parameter name, what was expected and what was
    given.  Raised before any compiled code runs."""


class StitchArgumentError(StitchInputError, TypeError):
    """A saved forward was called with arguments its compiled parameters do not
    bind (one missing, one unknown, too many): a ``TypeError``, as the same call
    of a plain function raises, that names the forward and its parameters."""


def describe_node(node: Any) -> str:
    """``name (op=..., target=...)`` for an FX node, without object ids."""
    op = getattr(node, "op", "?")
    target = getattr(node, "target", None)
    if isinstance(target, str):
        target_s = target
    else:
        target_s = getattr(target, "__qualname__", None) or getattr(
            target, "__name__", None
        )
        if target_s is None:
            target_s = type(target).__name__
        name_fn = getattr(target, "name", None)
        if callable(name_fn):
            try:
                target_s = str(name_fn())
            except Exception:  # noqa: BLE001 - best effort description only
                pass
    return f"'{getattr(node, 'name', '?')}' (op={op}, target={target_s})"


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message``: an error from a library, told in one
    line inside a Stitch message (its traceback stays in ``__cause__``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
