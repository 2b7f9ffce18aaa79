"""Run the Python wrapper module Inductor generated for a piece without
importing Inductor: its imports that would pull Inductor in are answered by
stand-ins (NOTE: [prebuilt pieces] in load.py).

``AsyncCompile.cpp_pybinding`` and ``AsyncCompile.triton`` return the prebuilt
kernels the caller loads, ``extern_kernels.<name>`` is the torch function
recorded at save time, and the few helper functions import their real module
only if they are ever called.  Every other import is the real one.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import types
from collections.abc import Callable, Sequence
from typing import Any

from stitch.core.errors import StitchCacheError

from ...compat import inductor
from ...loader import register_source

# Modules of the generated wrapper that would import Inductor, and the names it
# takes from them that are plain functions (forwarded to the real module only
# when called).  AsyncCompile and extern_kernels are answered separately.
LAZY_FUNCTIONS = inductor.WRAPPER_FUNCTIONS
ASYNC_COMPILE = inductor.ASYNC_COMPILE
SELECT_ALGORITHM = inductor.SELECT_ALGORITHM


class PrebuiltUnavailable(Exception):
    """No usable prebuilt record (expected: e.g. another machine); load through Inductor."""


def resolve_externs(extern: dict[str, Any]) -> dict[str, Any]:
    """``extern_kernels`` names -> the torch callables recorded by dotted path."""
    resolved = {}
    for name, dotted in extern.items():
        if not isinstance(dotted, str):
            raise StitchCacheError(f"extern kernel {name!r} has no path")
        resolved[name] = resolve_dotted(dotted)
    return resolved


def resolve_dotted(dotted: str) -> Any:
    """``torch.ops.aten.mm.out`` or ``torch.addmm``: import the longest module prefix, then getattr."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                value = getattr(value, attr)
        except AttributeError:
            break
        return value
    raise StitchCacheError(f"extern kernel {dotted} cannot be resolved")


def exec_wrapper(
    source: str,
    filename: str,
    kernel: Callable[[Sequence[str], str], Any],
    externs: dict[str, Any],
    triton: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Run a generated wrapper module's top level with Inductor's imports answered locally."""
    stubs = stub_modules(kernel, externs, triton)

    def import_(
        name: str,
        globals_: Any = None,
        locals_: Any = None,
        fromlist: Sequence[str] = (),
        level: int = 0,
    ) -> Any:
        if level == 0 and fromlist and name in stubs:
            return stubs[name]
        if level == 0 and name in inductor.TRITON_MODULES:
            # ``import triton`` / ``import triton.language as tl``: the top package.
            return stubs["triton"]
        return builtins.__import__(name, globals_, locals_, fromlist, level)

    namespace: dict[str, Any] = {
        "__builtins__": {**builtins.__dict__, "__import__": import_},
        "__name__": filename.strip("<>").replace("-", "_"),
        "__file__": filename,
    }
    code = compile(source, filename, "exec")
    register_source(source, filename)
    exec(code, namespace)  # noqa: S102 - Inductor's own generated module
    return namespace


def stub_modules(
    kernel: Callable[[Sequence[str], str], Any],
    externs: dict[str, Any],
    triton: Callable[..., Any] | None = None,
) -> dict[str, types.ModuleType]:
    stubs = {
        name: _LazyModule(name, functions) for name, functions in LAZY_FUNCTIONS.items()
    }
    # Triton's modules, imported only if a name of theirs is ever read.
    stubs["triton"] = _LazyModule("triton", ())
    stubs["triton"].language = _LazyModule("triton.language", ())  # type: ignore[attr-defined]
    async_compile = _LazyModule(ASYNC_COMPILE, ())
    async_compile.AsyncCompile = functools.partial(PrebuiltAsyncCompile, kernel, triton)  # type: ignore[attr-defined]
    stubs[ASYNC_COMPILE] = async_compile
    select = _LazyModule(SELECT_ALGORITHM, ())
    select.extern_kernels = _ExternKernels(externs)  # type: ignore[attr-defined]
    stubs[SELECT_ALGORITHM] = select
    return stubs


class _LazyModule(types.ModuleType):
    """Stands in for a module of Inductor: listed functions import it when called;
    any other name imports it at once (correct, just not fast)."""

    def __init__(self, name: str, functions: Sequence[str]) -> None:
        super().__init__(name)
        for fn in functions:
            setattr(self, fn, _forward(name, fn))

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(self.__name__), attr)


def _forward(module: str, name: str) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = name
    return forward


class _ExternKernels:
    """``extern_kernels`` with the callables recorded at save time."""

    def __init__(self, externs: dict[str, Any]) -> None:
        self.__dict__.update(externs)

    def __getattr__(self, attr: str) -> Any:
        real = importlib.import_module(SELECT_ALGORITHM).extern_kernels
        return getattr(real, attr)


class PrebuiltAsyncCompile:
    """``AsyncCompile`` for a prebuilt wrapper: kernels come from the record."""

    def __init__(
        self,
        kernel: Callable[[Sequence[str], str], Any],
        triton: Callable[..., Any] | None = None,
    ) -> None:
        self._kernel = kernel
        self._triton = triton

    def cpp_pybinding(self, argtypes: Sequence[str], source_code: str) -> Any:
        return self._kernel(argtypes, source_code)

    def triton(self, name: str, source_code: str, device_str: str = "cuda") -> Any:
        if self._triton is None or device_str != "cuda":
            raise PrebuiltUnavailable(f"a {device_str} Triton kernel ({name})")
        return self._triton(name, source_code, device_str)

    def wait(self, scope: dict[str, Any]) -> None:
        """Every kernel is loaded already."""

    def __getattr__(self, attr: str) -> Any:
        raise StitchCacheError(f"a prebuilt wrapper cannot use AsyncCompile.{attr}")
