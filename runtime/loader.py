"""Load emitted stitching source and bind it to its pieces (``compile_execution_fn``)."""

from __future__ import annotations

import ast
import hashlib
import linecache
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from stitch.codegen.errors import StitchLoadError

SUBMODS = "__vllm_submods__"
DISPATCH = "__vllm_dispatch__"
CONSTS = "__vllm_consts__"


def source_filename(code: str) -> str:
    """Content-hashed pseudo file name under which emitted source is registered."""
    digest = hashlib.sha256(code.encode()).hexdigest()[:12]
    return f"<stitch-execution-fn-{digest}>"


def register_source(code: str, filename: str) -> None:
    # NOTE: [linecache registration]
    # The entry has no mtime (None), so linecache.checkcache() keeps it: tracebacks,
    # pdb, inspect.getsource and profilers then show the emitted lines.
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)


def _max_const_index(tree: ast.AST) -> int:
    highest = -1
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == CONSTS
        ):
            index = node.slice
            if isinstance(index, ast.Constant) and type(index.value) is int:
                highest = max(highest, index.value)
            else:
                raise StitchLoadError(
                    f"{CONSTS} is indexed by a non-literal at line {node.lineno}"
                )
    return highest


def _bind(callable_: Any) -> Callable[..., Any]:
    # An nn.Module is bound through forward: the stitching path skips
    # nn.Module.__call__ (hooks, tracing state) on every call.
    if isinstance(callable_, torch.nn.Module):
        return callable_.forward
    return callable_


def load_execution_module(
    code: str, consts: Sequence[Any] | None = None
) -> dict[str, Any]:
    """Compile ``code`` under its content-hashed file name and run its top level."""
    filename = source_filename(code)
    try:
        tree = ast.parse(code, filename=filename)
        compiled = compile(tree, filename, "exec")
    except SyntaxError as exc:
        raise StitchLoadError(
            f"stitching source {filename} does not compile: {exc.msg} at line "
            f"{exc.lineno}"
        ) from exc
    consts_tuple = tuple(consts) if consts is not None else ()
    needed = _max_const_index(tree) + 1
    if needed > len(consts_tuple):
        raise StitchLoadError(
            f"stitching source {filename} reads {CONSTS}[{needed - 1}] but "
            f"{len(consts_tuple)} constants were given"
            + (" (consts=None)" if consts is None else "")
        )
    register_source(code, filename)
    namespace: dict[str, Any] = {
        "__name__": filename.strip("<>").replace("-", "_"),
        "__file__": filename,
        CONSTS: consts_tuple,
    }
    exec(compiled, namespace)  # noqa: S102 - this is the point of the module
    return namespace


def compile_execution_fn(
    code: str,
    submod_callables: Mapping[str, Any],
    submod_names: Sequence[str],
    consts: Sequence[Any] | None = None,
    *,
    dispatch: Any = None,
) -> Callable[..., Any]:
    """Compile emitted source and return ``execution_fn`` bound to its pieces.

    ``submod_names[i]`` must be a key of ``submod_callables``; the callable becomes
    ``__vllm_submods__[i]``.  ``consts`` fills ``__vllm_consts__``.
    """
    missing = [name for name in submod_names if name not in submod_callables]
    if missing:
        raise StitchLoadError(
            f"piece(s) {', '.join(repr(m) for m in missing)} named in submod_names "
            f"have no callable; known: {sorted(submod_callables)}"
        )
    namespace = load_execution_module(code, consts)
    fn = namespace.get("execution_fn")
    if not isinstance(fn, types.FunctionType):
        raise StitchLoadError(
            f"stitching source {source_filename(code)} does not define a function "
            "'execution_fn'"
        )
    code_obj = fn.__code__
    kwonly = code_obj.co_varnames[
        code_obj.co_argcount : code_obj.co_argcount + code_obj.co_kwonlyargcount
    ]
    callables = [submod_callables[name] for name in submod_names]
    if DISPATCH in kwonly:
        return bind_kwonly(fn, DISPATCH, dispatch if dispatch is not None else SizeTables(callables))
    if SUBMODS not in kwonly:
        raise StitchLoadError(
            f"execution_fn in {source_filename(code)} has no keyword-only "
            f"parameter {SUBMODS} or {DISPATCH}"
        )
    return bind_kwonly(fn, SUBMODS, [_bind(c) for c in callables])


class SizeTables(dict):  # type: ignore[type-arg]
    """Runtime size -> list of runnables, built on first use of each size.

    A callable with ``runnable_for(size)`` (a :class:`PiecewiseBackend`, a CUDA
    graph dispatcher) contributes its runnable for that size; any other callable
    is the same at every size.
    """

    def __init__(self, callables: Sequence[Any]) -> None:
        super().__init__()
        self.callables = list(callables)

    def __missing__(self, size: Any) -> list[Any]:
        size = int(size)
        table = [
            c.runnable_for(size) if hasattr(c, "runnable_for") else _bind(c)
            for c in self.callables
        ]
        self[size] = table
        return table


def bind_kwonly(fn: types.FunctionType, name: str, value: Any) -> types.FunctionType:
    """A copy of ``fn`` whose keyword-only parameter ``name`` defaults to ``value``.

    A keyword-only default costs nothing per call, unlike functools.partial,
    which merges keyword dicts on every call.
    """
    bound = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    bound.__kwdefaults__ = {**(fn.__kwdefaults__ or {}), name: value}
    bound.__qualname__ = fn.__qualname__
    bound.__doc__ = fn.__doc__
    bound.__module__ = fn.__module__
    return bound
