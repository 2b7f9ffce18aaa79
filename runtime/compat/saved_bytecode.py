"""The globals Dynamo's saved bytecode reads, bound without importing Dynamo.

A warm start rebuilds a saved forward's bytecode into a plain function; the
modules that bytecode names are bound here, each imported only when used, and
``torch._dynamo.utils``'s helpers are answered without Dynamo (NOTE: [saved
bytecode imports lazily]).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Mapping
from typing import Any

import torch

# The module Dynamo's transformed bytecode reads its helpers from.
DYNAMO_UTILS = "torch._dynamo.utils"


def bytecode_globals(import_sources: Mapping[str, str]) -> dict[str, Any]:
    """What the aliases of Dynamo's saved bytecode name, without importing anything yet.

    NOTE: [saved bytecode imports lazily]
    The record of a saved forward lists the modules its bytecode reads, by
    alias.  torch 2.11 lists ``torch._dynamo.polyfills.builtins`` there though
    the bytecode never uses it: importing every listed module up front imported
    Dynamo and Inductor and cost 1.4-1.7 s per warm start.  So a module not
    yet imported is bound as a stand-in that imports it on first use, and
    ``torch._dynamo.utils``, whose three helpers the bytecode does call, is
    answered without Dynamo.
    """
    found: dict[str, Any] = {}
    for alias, module in import_sources.items():
        if module == DYNAMO_UTILS:
            found[alias] = DYNAMO_HELPERS
        elif module in sys.modules:
            found[alias] = sys.modules[module]
        else:
            found[alias] = _LazyModule(module)
    return found


class _LazyModule(types.ModuleType):
    """A module imported on its first attribute read (then read as the real one)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        value = getattr(importlib.import_module(self.__name__), attr)
        self.__dict__[attr] = value
        return value


class _DynamoHelpers(types.ModuleType):
    """The helpers of ``torch._dynamo.utils`` Dynamo's bytecode calls, without importing Dynamo.

    Same behaviour as the originals in every supported release (a profiler
    range around the pre-graph bytecode while a profiler runs; ``x.size(i)``);
    any other name is taken from the real module.
    """

    def __init__(self) -> None:
        super().__init__("stitch_dynamo_helpers")

    @staticmethod
    def record_pregraph_bytecode_enter() -> Any:
        if torch.autograd.profiler._is_profiler_enabled:
            cm = torch._C._profiler._RecordFunctionFast("Pregraph bytecode")
        else:
            cm = contextlib.nullcontext()
        cm.__enter__()
        return cm

    @staticmethod
    def record_pregraph_bytecode_exit(cm: Any) -> None:
        cm.__exit__(None, None, None)

    @staticmethod
    def call_size(x: Any, i: int) -> int:
        return x.size(i)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(DYNAMO_UTILS), attr)


DYNAMO_HELPERS = _DynamoHelpers()
