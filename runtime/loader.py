"""Load emitted stitching source and bind it to its pieces (``compile_execution_fn``)."""

from __future__ import annotations

import ast
import contextlib
import linecache
import logging
import os
import stat
import tempfile
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from stitch.core.contract import (
    CONSTS_NAME,
    DISPATCH_NAME,
    FUNCTION_NAME,
    RANGES_NAME,
    SUBMODS_NAME,
)
from stitch.core.errors import StitchLoadError
from stitch.core.hashing import key_hash

from .compat import python_ast

log = logging.getLogger("stitch")

# NOTE: [emitted source lives in a real file]
# Python 3.11's default excepthook (and faulthandler, py-spy, some profilers)
# read source lines from disk, not from linecache.  So source is always
# compiled under the path of a real file holding exactly that text: the one the
# caller names (the cache's execution_fn.py), or else a content-named file in a
# private per-user directory.  It is registered in linecache too, which serves
# pdb and inspect even if the file goes away, or was never written: where the
# directory cannot be made or is not private, the source is compiled under a
# pseudo file name, as before, with a warning.


def _source_dir() -> str:
    uid = os.getuid() if hasattr(os, "getuid") else None
    user = str(uid) if uid is not None else os.environ.get("USERNAME", "user")
    return os.path.join(tempfile.gettempdir(), f"stitch-source-{user}")


def source_filename(code: str) -> str:
    """The content-named file :func:`load_execution_module` compiles ``code`` under
    when no ``filename`` is given."""
    digest = key_hash(code)
    return os.path.join(_source_dir(), f"execution_fn_{digest}.py")


def _private_dir(path: str) -> None:
    """Create ``path`` with mode 0700, or check that it is ours and private."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise StitchLoadError(f"{path} holds emitted source but is not a directory")
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o077):
        raise StitchLoadError(
            f"{path} holds emitted source but is not private to this user (owner "
            f"uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})"
        )


def write_source_file(code: str) -> str | None:
    """Write ``code`` to :func:`source_filename` (atomically; kept if already there).

    Returns the path, or None, with a warning, where it cannot be written.
    """
    path = source_filename(code)
    directory = os.path.dirname(path)
    data = code.encode()
    try:
        _private_dir(directory)
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return path
        except OSError:
            pass
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".py")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except (OSError, StitchLoadError) as exc:
        log.warning(
            "stitch: emitted source not written to %s (%s); Python's default "
            "traceback printer will not show its lines",
            path,
            exc,
        )
        return None
    return path


def register_source(code: str, filename: str) -> None:
    # NOTE: [linecache registration]
    # The entry has no mtime (None), so linecache.checkcache() keeps it: tracebacks,
    # pdb, inspect.getsource and profilers then show the emitted lines.
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)


def _check_file(code: str, filename: str) -> None:
    try:
        with open(filename, encoding="utf-8") as f:
            same = f.read() == code
    except OSError as exc:
        raise StitchLoadError(
            f"filename={filename!r} must be a file holding the source: {exc}"
        ) from exc
    if not same:
        raise StitchLoadError(
            f"filename={filename!r} does not hold exactly the source being loaded; "
            "tracebacks would show wrong lines"
        )


def _max_const_index(tree: ast.AST) -> int:
    highest = -1
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == CONSTS_NAME
        ):
            index = node.slice
            if isinstance(index, ast.Constant) and type(index.value) is int:
                highest = max(highest, index.value)
            else:
                raise StitchLoadError(
                    f"{CONSTS_NAME} is indexed by a non-literal at line {node.lineno}"
                )
    return highest


def bind_runnable(callable_: Any) -> Callable[..., Any]:
    # An nn.Module is bound through forward: the stitching path skips
    # nn.Module.__call__ (hooks, tracing state) on every call.
    if isinstance(callable_, torch.nn.Module):
        return callable_.forward
    return callable_


def load_execution_module(
    code: str,
    consts: Sequence[Any] | None = None,
    *,
    filename: str | None = None,
    extra_globals: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compile ``code`` and run its top level; returns the module namespace.

    ``filename`` names a real file holding exactly ``code`` (say the cache's
    ``execution_fn.py``); without it the code is written to
    :func:`source_filename` first (see NOTE above).  ``extra_globals`` are
    module globals the code reads (the input check's guard builder).
    """
    label = filename or source_filename(code)
    try:
        tree = python_ast.parse(code, filename=label)
    except SyntaxError as exc:
        raise StitchLoadError(
            f"stitching source {label} does not compile: {exc.msg} at line "
            f"{exc.lineno}"
        ) from exc
    consts_tuple = tuple(consts) if consts is not None else ()
    needed = _max_const_index(tree) + 1
    if needed > len(consts_tuple):
        raise StitchLoadError(
            f"stitching source {label} reads {CONSTS_NAME}[{needed - 1}] but "
            f"{len(consts_tuple)} constants were given"
            + (" (consts=None)" if consts is None else "")
        )
    digest = key_hash(code)
    if filename is None:
        label = write_source_file(code) or f"<stitch-execution-fn-{digest}>"
    else:
        _check_file(code, filename)
    compiled = compile(tree, label, "exec")
    register_source(code, label)
    namespace: dict[str, Any] = {
        "__name__": f"stitch_execution_fn_{digest}",
        "__file__": label,
        CONSTS_NAME: consts_tuple,
        **(extra_globals or {}),
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
    filename: str | None = None,
    ranges: Any = None,
) -> Callable[..., Any]:
    """Compile emitted source and return ``execution_fn`` bound to its pieces.

    ``submod_names[i]`` must be a key of ``submod_callables``; the callable becomes
    item ``i`` of ``__vllm_submods__``.  ``consts`` fills ``__vllm_consts__``.  ``filename``
    is a real file holding exactly ``code``, as for :func:`load_execution_module`.
    ``ranges`` times the piece calls of a profiling variant (``__stitch_ranges__``,
    see :class:`stitch.runtime.profiling.PieceRanges`); it is required by such
    source and refused by any other.
    """
    missing = [name for name in submod_names if name not in submod_callables]
    if missing:
        raise StitchLoadError(
            f"piece(s) {', '.join(repr(m) for m in missing)} named in submod_names "
            f"have no callable; known: {sorted(submod_callables)}"
        )
    namespace = load_execution_module(code, consts, filename=filename)
    label = namespace["__file__"]
    fn = namespace.get(FUNCTION_NAME)
    if not isinstance(fn, types.FunctionType):
        raise StitchLoadError(
            f"stitching source {label} does not define a function '{FUNCTION_NAME}'"
        )
    code_obj = fn.__code__
    kwonly = code_obj.co_varnames[
        code_obj.co_argcount : code_obj.co_argcount + code_obj.co_kwonlyargcount
    ]
    callables = [submod_callables[name] for name in submod_names]
    if (RANGES_NAME in kwonly) != (ranges is not None):
        raise StitchLoadError(
            f"{FUNCTION_NAME} in {label} "
            + (
                f"is a profiling variant and needs ranges= ({RANGES_NAME})"
                if ranges is None
                else f"takes no {RANGES_NAME}, but ranges= was given"
            )
        )
    if ranges is not None:
        fn = bind_kwonly(fn, RANGES_NAME, ranges)
    if DISPATCH_NAME in kwonly:
        return bind_kwonly(
            fn,
            DISPATCH_NAME,
            dispatch if dispatch is not None else SizeTables(callables),
        )
    if SUBMODS_NAME not in kwonly:
        raise StitchLoadError(
            f"{FUNCTION_NAME} in {label} has no keyword-only parameter "
            f"{SUBMODS_NAME} or {DISPATCH_NAME}"
        )
    return bind_kwonly(fn, SUBMODS_NAME, [bind_runnable(c) for c in callables])


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
            c.runnable_for(size) if hasattr(c, "runnable_for") else bind_runnable(c)
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
