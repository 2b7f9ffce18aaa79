"""Compiling a saved forward: trace through torch's aot_compile with a Stitch backend, save its record.

See NOTE: [warm start without Dynamo] in ``aot.py``.  This is the saved
forward's one way into the compile pipeline: a :class:`StitchBackend` built
here (or given by the caller), whose result torch's aot_compile saves.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import marshal
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from stitch.core.errors import StitchCacheError, StitchError

from ..compat import dynamo
from ..config import CompilationConfig
from ..cudagraph import CUDAGraphManager
from ..pipeline.api import StitchBackend, StitchFunction, parse_reference
from ..store import codec
from ..store.digests import content_hash
from ..store.records import AOT_RECORD_FORMAT, SavedFunction
from .arguments import split_args
from .load_saved import BYTECODE_FILE, TORCH_FILE, build_forward
from .record import literal, model_name, traced_code, write_record

log = logging.getLogger("stitch")


def compile_and_save(
    model: torch.nn.Module,
    args: Sequence[Any],
    dims: Sequence[Sequence[int]],
    config: CompilationConfig,
    cudagraphs: CUDAGraphManager | None,
    folder: str | None,
    now: dict[str, Any],
    *,
    guards: bool = False,
    fallback: bool = True,
    backend: StitchBackend | None = None,
    names: Mapping[tuple[int, int], str] | None = None,
) -> tuple[Callable[..., Any], str | None, StitchBackend]:
    """Compile ``model``'s forward for ``args`` (``dims`` marked unbacked) and save
    it to ``folder``; the forward, the folder it was saved to (None: not saved)
    and the backend that compiled it.  ``backend``: the caller's (its config and
    CUDA graphs are ``config`` and ``cudagraphs``); default: a new one.  ``now``:
    what the record is valid for (``record.factors``)."""
    if backend is None:
        backend = StitchBackend(config, serializable=True, cudagraphs=cudagraphs)
    with marked_unbacked(args, dims, names):
        forward, saved = _trace_and_save(
            model,
            args,
            now,
            backend,
            folder,
            guards,
            fallback,
        )
    return forward, saved, backend


@contextlib.contextmanager
def marked_unbacked(
    args: Sequence[Any],
    dims: Sequence[Sequence[int]],
    names: Mapping[tuple[int, int], str] | None = None,
) -> Iterator[None]:
    """Mark the requested dims for Dynamo while compiling; the inputs are left as they were.

    ``names``: ``(position, dim) -> name``, dims of one name marked as one size.

    Dynamo's marks are attributes of the tensor; a guarded call (``guards=True``)
    with a tensor still marked fails Dynamo's marking guard.
    """
    saved = [(a, dict(a.__dict__)) for a in args if isinstance(a, torch.Tensor)]
    names = names or {}
    for position, (a, wanted) in enumerate(zip(args, dims, strict=False)):
        if not isinstance(a, torch.Tensor):
            continue
        marked = dynamo.marked_dims(a)
        for d in wanted:
            if d not in marked:
                dynamo.mark_unbacked(a, d, names.get((position, d)))
    try:
        yield
    finally:
        for a, attrs in saved:
            for name in set(a.__dict__) - set(attrs):
                delattr(a, name)
            a.__dict__.update(attrs)


def _trace_and_save(
    model: torch.nn.Module,
    args: Sequence[Any],
    now: dict[str, Any],
    backend: StitchBackend,
    folder: str | None,
    guards: bool,
    fallback: bool = True,
) -> tuple[Callable[..., Any], str | None]:
    """Trace and compile through torch's aot_compile; save the record (valid for
    ``now``, see ``record.factors``) when it can be.

    ``fallback``: when torch's aot_compile fails, run the model through
    torch.compile instead (else raise what it raised)."""
    compiled = _aot_traced(model, args, backend, fallback)
    if compiled is None:
        return torch.compile(model, backend=backend, fullgraph=True), None
    artifacts = compiled._artifacts
    stitched = artifacts.compiled_fn
    assert isinstance(stitched, StitchFunction)  # serializable=True above
    function, why_not_light = function_record(
        artifacts, type(model).forward.__globals__
    )
    bytecode = b""
    if not why_not_light:
        # What the light path loads: its sha256 is in the record.
        bytecode = marshal.dumps(artifacts.runtime_env.bytecode)
        function["bytecode_sha256"] = content_hash(bytecode)
    forward = _bound_forward(model, compiled, function, why_not_light, guards)
    if folder is None:
        return forward, None
    saved = _saved_files(model, compiled, why_not_light, bytecode)
    if saved is None:
        return forward, None
    reference, files = saved
    torch_data = files.get(TORCH_FILE, b"")
    record = {
        "format": AOT_RECORD_FORMAT,
        "model": model_name(model),
        "factors": literal(now),
        "code": traced_code(artifacts.source_info.inlined_sources),
        "function": function,
        "stitched": reference,
        "torch_function_sha256": (content_hash(torch_data) if torch_data else None),
    }
    return forward, _write(model, folder, record, files, backend)


def _aot_traced(
    model: torch.nn.Module,
    args: Sequence[Any],
    backend: StitchBackend,
    fallback: bool,
) -> Any | None:
    """torch's aot_compile of ``model``'s forward for ``args``; None when it failed
    and ``fallback`` allows the Dynamo-entered path instead (said in a warning)."""
    positional, kwargs = split_args(args)
    try:
        with torch.no_grad():
            return dynamo.aot_compile(
                type(model).forward, backend, (model, *positional), kwargs
            )
    except Exception as exc:  # noqa: BLE001 - fall back to the Dynamo-entered path
        if not fallback or isinstance(
            getattr(exc, "inner_exception", exc), StitchError
        ):
            raise  # the model does not compile: the fallback would fail the same way
        log.warning(
            "stitch aot: torch's aot_compile failed for %s (%s: %s); "
            "running it through torch.compile instead",
            model_name(model),
            type(exc).__name__,
            exc,
        )
        return None


def _bound_forward(
    model: torch.nn.Module,
    compiled: Any,
    function: dict[str, Any],
    why_not_light: str,
    guards: bool,
) -> Callable[..., Any]:
    """The compiled forward bound to ``model``: torch's (guarded, or when the
    light path cannot load it), else the plain function rebuilt from its bytecode."""
    if guards or why_not_light:
        if not guards:
            compiled.disable_guard_check()
        return types.MethodType(compiled, model)
    artifacts = compiled._artifacts
    env = artifacts.runtime_env
    return types.MethodType(
        build_forward(
            env.bytecode,
            codec.convert(SavedFunction, function, model_name(model)),
            type(model).forward.__globals__,
            artifacts.compiled_fn.fn,
            env.closure,
        ),
        model,
    )


def _saved_files(
    model: torch.nn.Module, compiled: Any, why_not_light: str, bytecode: bytes
) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """The stitched function's reference and the files saved beside the record;
    None (said in a warning) when torch's save fails."""
    try:
        reference = parse_reference(
            StitchFunction.serialize_compile_artifacts(
                compiled._artifacts.compiled_fn
            ).decode("utf-8")
        )
        torch_data = torch_file(compiled, why_not_light)
    except (
        Exception
    ) as exc:  # noqa: BLE001 - this process runs; the next compiles again
        log.warning(
            "stitch aot: %s cannot be saved (%s: %s); the next process compiles it again",
            model_name(model),
            type(exc).__name__,
            exc,
        )
        return None
    files = {TORCH_FILE: torch_data} if torch_data else {}
    if bytecode:
        files[BYTECODE_FILE] = bytecode
    else:
        log.info(
            "stitch aot: %s loads through torch's loader: %s",
            model_name(model),
            why_not_light,
        )
    return reference, files


def _write(
    model: torch.nn.Module,
    folder: str,
    record: dict[str, Any],
    files: dict[str, bytes],
    backend: StitchBackend,
) -> str | None:
    """Write the record and its files to ``folder`` (the folder, or None when it
    could not be written); under a tiered start, once every piece is compiled."""
    tier = backend.compiled[-1].tier if backend.compiled else None
    if tier is not None:
        # NOTE: [a tiered start] (pipeline/tiered/tier.py): the saved forward names
        # compiled pieces only, so it is written once every piece is swapped in.
        tier.when_complete(
            lambda ok: _write_when_compiled(model, folder, record, files, ok)
        )
        return folder
    try:
        write_record(folder, record, files)
    except OSError as exc:
        log.warning("stitch aot: could not write %s (%s)", folder, exc)
        return None
    return folder


def _write_when_compiled(
    model: torch.nn.Module,
    folder: str,
    record: dict[str, Any],
    files: dict[str, bytes],
    compiled: bool,
) -> None:
    if not compiled:
        log.warning(
            "stitch aot: %s is not saved: some of its pieces stay uncompiled in "
            "this process; the next one compiles what is missing",
            model_name(model),
        )
        return
    from ..pipeline.api import index_sha256, reference_entry

    stitched = dict(record["stitched"])
    try:
        # The workers wrote the index since the reference was made.
        stitched["index_sha256"] = index_sha256(reference_entry(stitched))
        write_record(folder, dict(record, stitched=stitched), files)
    except (OSError, StitchCacheError) as exc:
        log.warning("stitch aot: could not write %s (%s)", folder, exc)
        return
    log.info(
        "stitch aot: %s saved to %s, every piece compiled", model_name(model), folder
    )


def torch_file(compiled: Any, why_not_light: str) -> bytes:
    """torch's save of the compiled function; b"" when torch cannot save it and
    the forward does not need it.

    NOTE: [a forward torch cannot save]
    torch pickles the traced function's closure by reference: a transformers
    forward's wrapper holds the undecorated ``forward``, which is not the
    class attribute, so the pickle fails.  The plain forward needs only the
    bytecode and the closure of this process (NOTE: [a decorated forward's
    closure]); ``guards=True``, which loads torch's function, then compiles
    the model again.
    """
    try:
        return dynamo.serialize_aot(compiled)
    except Exception as exc:  # noqa: BLE001 - pickling reports many kinds
        if why_not_light:
            raise
        log.info(
            "stitch aot: torch cannot save the function with its guards "
            "(%s: %s); guards=True will compile it again",
            type(exc).__name__,
            exc,
        )
        return b""


def function_record(
    artifacts: Any, forward_globals: Mapping[str, Any]
) -> tuple[dict[str, Any], str]:
    """What rebuilding Dynamo's forward needs; and why it cannot be rebuilt ("" if it can)."""
    env = artifacts.runtime_env
    why = []
    # NOTE: [modules Dynamo installs as globals]
    # Where the forward's module does not bind a module the bytecode loads
    # (transformers' wrapper building an output through ``collections``),
    # Dynamo installs it into that module's globals as
    # ``___module_<name>_<id>_c<n>``: this process has it, a later one must
    # import it again under that alias.
    installed = {}
    for name in env.bytecode.co_names:
        if name.startswith("___") and name in forward_globals:
            value = forward_globals[name]
            if isinstance(value, types.ModuleType):
                installed[name] = value.__name__
            else:
                why.append(f"the bytecode reads the global {name} Dynamo installed")
    record = {
        "backend_id": artifacts.backend_id,
        "import_sources": {**installed, **dict(env.import_sources)},
        "argdefs": None,
        "kwdefaults": None,
        "light": False,
    }
    if env.closure and len(env.closure) != len(env.bytecode.co_freevars):
        why.append("the forward's closure does not match its free variables")
    # Builtins (``type``) are bound again by name; other saved globals are not literals.
    found = {
        name: value
        for name, value in env.used_globals.items()
        if getattr(builtins, name, None) is not value
    }
    if found:
        why.append(f"the bytecode reads saved globals {sorted(found)}")
    record["builtins"] = sorted(set(env.used_globals) - set(found))
    for name in ("argdefs", "kwdefaults"):
        value = getattr(env, name)
        try:
            record[name] = literal(value) if value is not None else None
        except (SyntaxError, ValueError):
            why.append(f"its {name} are not literals")
    record["light"] = not why
    return record, "; ".join(why)
