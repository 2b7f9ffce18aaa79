"""``--module pkg.mod:factory``: a model of the user's own, with its example inputs.

NOTE: [the factory contract]
``pkg.mod`` is imported with the current folder first on ``sys.path``, as
``python -m`` does, and ``factory`` (a name in it; dots reach an attribute of
an attribute) is called with no arguments.  It returns one of

- ``(model, args)``: ``model(*args)`` is the one forward run;
- ``(model, args, kwargs)``: ``model(*args, **kwargs)`` is;
- ``(model, inputs)``, ``inputs`` a callable: ``inputs(size)`` returns the
  inputs of one forward of each size of ``--sizes``, as ``args`` or as a pair
  ``(args, kwargs)`` (a 2-tuple of a tuple and a dict is read as that pair).

``model`` is a ``torch.nn.Module`` (put in eval mode, left on its device);
``args`` a tuple or list, ``kwargs`` a dict with str keys; a forward's inputs
hold at least one tensor.  The model is compiled as ``--hf`` compiles a
transformers model, ``torch.compile(dynamic=True)``: every dimension is a size
from the first call on, and a size Dynamo specializes (0 and 1, or one the
model branches on) gets a graph of its own.  So the factory names no dynamic
dims; it chooses the sizes of its inputs.  A fixed ``args`` is one size: the
size of dim 0 of its first tensor, in the tables.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from stitch.core.errors import StitchModelError, describe_exception

from ..compat.pytree import tree_leaves


@dataclasses.dataclass(frozen=True)
class Factory:
    """What a factory returned: the model, and its inputs at a size."""

    spec: str
    model: torch.nn.Module
    # size -> (args, kwargs); None: the one fixed forward of ``fixed``.
    sized: Callable[[int], Any] | None
    fixed: tuple[tuple[Any, ...], dict[str, Any]] | None

    def call(self, size: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The ``(args, kwargs)`` of one forward of ``size``."""
        assert self.sized is not None
        try:
            value = self.sized(size)
        except Exception as exc:
            why = describe_exception(exc)
            raise StitchModelError(
                f"--module {self.spec}: its inputs({size}) raised {why}"
            ) from exc
        return _inputs(self.spec, f"inputs({size})", value)

    def fixed_size(self) -> int:
        """The size a fixed forward is shown as: dim 0 of its first tensor."""
        assert self.fixed is not None
        tensors = [t for t in tree_leaves(self.fixed) if isinstance(t, torch.Tensor)]
        return tensors[0].shape[0] if tensors[0].dim() else 1


def load_factory(spec: str) -> Factory:
    """Import ``spec`` (``pkg.mod:factory``), call it and check what it returns."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise StitchModelError(
            f"--module {spec}: give MODULE:FACTORY, e.g. my_models:build"
        )
    module = _import(spec, module_name)
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            where = getattr(module, "__file__", None) or module_name
            raise StitchModelError(
                f"--module {spec}: {module_name} ({where}) has no attribute {attr!r}"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise StitchModelError(
            f"--module {spec}: {attr} is a {type(factory).__name__}, not a function"
        )
    try:
        result = factory()
    except Exception as exc:
        raise StitchModelError(
            f"--module {spec}: {attr}() raised {describe_exception(exc)}"
        ) from exc
    return _check_result(spec, attr, result)


def _import(spec: str, module_name: str) -> Any:
    # NOTE: [the factory contract]: the current folder first, as python -m.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise StitchModelError(
                f"--module {spec}: no module named {exc.name!r} (looked in {cwd} "
                "and sys.path)"
            ) from exc
        raise _import_error(spec, module_name, exc) from exc
    except Exception as exc:
        raise _import_error(spec, module_name, exc) from exc


def _import_error(spec: str, module_name: str, exc: BaseException) -> StitchModelError:
    return StitchModelError(
        f"--module {spec}: importing {module_name} failed: {describe_exception(exc)}"
    )


def _check_result(spec: str, attr: str, result: Any) -> Factory:
    shapes = "(model, args), (model, args, kwargs) or (model, inputs)"
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        got = type(result).__name__
        if isinstance(result, (tuple, list)):
            got = f"a {got} of {len(result)}"
        raise StitchModelError(
            f"--module {spec}: {attr}() returned {got}; expected {shapes}"
        )
    model = result[0]
    if not isinstance(model, torch.nn.Module):
        raise StitchModelError(
            f"--module {spec}: {attr}() returned a {type(model).__name__} as its "
            "model; expected a torch.nn.Module"
        )
    model.eval()
    if len(result) == 2 and callable(result[1]):
        return Factory(spec, model, result[1], None)
    kwargs = result[2] if len(result) == 3 else {}
    if not isinstance(kwargs, dict):
        raise StitchModelError(
            f"--module {spec}: {attr}() returned a {type(kwargs).__name__} as its "
            "kwargs; expected a dict"
        )
    return Factory(spec, model, None, _checked(spec, f"{attr}()", result[1], kwargs))


def _inputs(spec: str, what: str, value: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` of what ``inputs(size)`` returned: ``args``, or the
    pair ``(args, kwargs)``."""
    pair = (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], (tuple, list))
        and isinstance(value[1], dict)
    )
    return _checked(spec, what, *((value[0], value[1]) if pair else (value, {})))


def _checked(
    spec: str, what: str, args: Any, kwargs: dict[Any, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not isinstance(args, (tuple, list)):
        raise StitchModelError(
            f"--module {spec}: {what} gave a {type(args).__name__} as its args; "
            "expected a tuple (one input: (x,))"
        )
    if not all(isinstance(k, str) for k in kwargs):
        raise StitchModelError(f"--module {spec}: {what}'s kwargs keys must be str")
    if not any(isinstance(t, torch.Tensor) for t in tree_leaves((args, kwargs))):
        raise StitchModelError(
            f"--module {spec}: {what} returned no inputs (no tensor among its "
            "args and kwargs)"
        )
    return tuple(args), dict(kwargs)
