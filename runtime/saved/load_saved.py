"""Loading a saved forward: its record checked, its bytecode rebuilt into a plain function bound to the model.

See NOTE: [warm start without Dynamo] in ``aot.py``.
"""

from __future__ import annotations

import builtins
import marshal
import types
from collections.abc import Callable
from typing import Any

import torch

from stitch.core.errors import StitchCacheError

from ..compat import dynamo, saved_bytecode
from ..cudagraph import CUDAGraphManager
from ..pipeline.api import load_reference, reference_entry, reference_root
from ..store import location
from ..store.records import SavedFunction
from .record import StaleRecord, read_file, read_record, stale_reasons

BYTECODE_FILE = location.AOT_BYTECODE_FILE
TORCH_FILE = location.AOT_TORCH_FILE


def load(
    model: torch.nn.Module,
    now: dict[str, Any],
    root: str,
    folder: str,
    guards: bool,
    cudagraphs: CUDAGraphManager | None = None,
) -> tuple[Callable[..., Any], str] | None:
    """The saved forward bound to ``model`` and its cache entry (None if nothing was
    saved); ``now``: what a record must have been saved for (``record.factors``);
    ``root``: the cache root its stitched function's entry lies under."""
    record = read_record(folder)
    if record is None:
        return None
    reasons = stale_reasons(record, now)
    if reasons:
        raise StaleRecord("; ".join(reasons))
    forward_globals = type(model).forward.__globals__
    entry = reference_entry(record.stitched, root)
    function = record.function
    if guards or not function.light:
        if not record.torch_function_sha256:
            raise StaleRecord(f"torch could not save its function ({TORCH_FILE})")
        data = read_file(folder, TORCH_FILE, record.torch_function_sha256)
        try:
            with reference_root(root, cudagraphs):
                compiled = dynamo.deserialize_aot(data, forward_globals)
        except StitchCacheError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. saved on another system
            raise StitchCacheError(
                f"torch cannot load {TORCH_FILE} ({type(exc).__name__}: {exc})"
            ) from exc
        if not guards:
            compiled.disable_guard_check()
        return types.MethodType(compiled, model), entry
    code = marshal.loads(read_file(folder, BYTECODE_FILE, function.bytecode_sha256))
    if not isinstance(code, types.CodeType):
        raise StitchCacheError(f"{folder}/{BYTECODE_FILE} holds no code object")
    stitched = load_reference(record.stitched, root, cudagraphs)
    closure = live_closure(type(model).forward, code, folder)
    forward = build_forward(code, function, forward_globals, stitched, closure)
    return types.MethodType(forward, model), entry


def build_forward(
    code: types.CodeType,
    function: SavedFunction,
    forward_globals: dict[str, Any],
    stitched: Callable[..., Any],
    closure: tuple[Any, ...] | None = None,
) -> types.FunctionType:
    """Dynamo's transformed forward as a plain function calling ``stitched``.

    This is what torch's own loader builds (``GraphRuntimeEnv.forward_callable``)
    minus the guard manager, and with its modules imported only when used (see
    NOTE: [saved bytecode imports lazily] in ``compat/saved_bytecode.py``).
    """
    f_globals = dict(forward_globals)
    f_globals.update(saved_bytecode.bytecode_globals(function.import_sources))
    for name in function.builtins:  # a global of the model's module shadows one
        f_globals.setdefault(name, getattr(builtins, name))
    f_globals[function.backend_id] = stitched
    fn = types.FunctionType(
        code, f_globals, code.co_name, function.argdefs, closure or None
    )
    if function.kwdefaults:
        fn.__kwdefaults__ = dict(function.kwdefaults)
    return fn


def live_closure(
    forward: Any, code: types.CodeType, folder: str
) -> tuple[Any, ...] | None:
    """The cells of the model's own forward, for saved bytecode with free variables.

    NOTE: [a decorated forward's closure]
    transformers decorates ``forward`` (``can_return_tuple``): the function
    Dynamo traces is a wrapper whose closure holds the decorated function.
    Dynamo's bytecode keeps the wrapper's free variables; the cells are this
    process's wrapper's, the same functions of the same source (the record pins
    the source files Dynamo traced, ``aot_record.traced_code``).
    """
    if not code.co_freevars:
        return None
    own = getattr(forward, "__code__", None)
    if own is None or own.co_freevars != code.co_freevars or not forward.__closure__:
        raise StaleRecord(
            f"the saved forward's free variables {code.co_freevars} are not "
            f"those of {getattr(forward, '__qualname__', forward)!r} ({folder})"
        )
    return tuple(forward.__closure__)
