"""``aot_compile``: compile a model once; every later process loads it without Dynamo.

NOTE: [warm start without Dynamo]
A warm Dynamo-entered start still traces the whole model in every process
(seconds per layer stack), and every forward passes Dynamo's guards.
``aot_compile(model, example_inputs, config)`` compiles through
``torch.compile(...).aot_compile`` once and saves, beside Stitch's cache entry:

- the forward Dynamo produced (its transformed bytecode, which gathers the
  parameters, calls the stitched function and builds the result), marshalled;
- a reference to the Stitch cache entry the stitched function runs (see
  ``stitched.py``), never a copy of it;
- torch's own save of the compiled function (with its guards), for debugging;
- what the save is valid for: torch, Python and Stitch versions, the config
  hash, the inputs' dtypes, ranks and dynamic dims, and the source files Dynamo
  traced.

A later process with the same model and config finds that record by the model's
class and structure, checks it, and rebuilds the forward as a plain Python
function bound to the model: no Dynamo import, no tracing, no fake tensors, no
Inductor (pieces load prebuilt), and no guard evaluation per forward.  When the
record is stale (another torch, edited model code, another config, other input
dtypes or ranks) one warning says why and the model is compiled again.

Guards are the debugging switch: ``guards=True`` (or ``STITCH_AOT_GUARDS=1``)
loads torch's saved function instead and checks Dynamo's guards on every call,
raising with the failed guard when an input no longer fits.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import hashlib
import logging
import marshal
import os
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from stitch.core.errors import StitchCacheError, StitchConfigError, StitchError

from ..compat import dynamo
from ..config import CompilationConfig
from ..cudagraph import CUDAGraphManager
from ..pipeline.backend import StitchBackend
from ..pipeline.stitched import (
    StitchFunction,
    load_reference,
    parse_reference,
    reference_entry,
    reference_root,
)
from ..store.cache import cache_root
from .call_args import CallArgs, call_args, dims_by_position
from .input_check import AOTOps, after_compile, after_load
from .record import (
    RECORD_FORMAT,
    StaleRecord,
    dynamic_spec,
    factors,
    literal,
    model_name,
    read_file,
    read_record,
    record_folder,
    stale_reasons,
    traced_code,
    write_record,
)

log = logging.getLogger("stitch")

BYTECODE_FILE = "forward.bytecode"
TORCH_FILE = "torch_function.bin"
GUARDS_ENV = "STITCH_AOT_GUARDS"


@dataclasses.dataclass
class AOTCompiledModel:
    """What :func:`aot_compile` returns: call it as you would call the model.

    ``forward`` is what a serving loop calls (bound to the model: no Dynamo frame
    and, unless ``guards``, no guard check).  ``warm`` says it was loaded from a
    saved record without tracing; ``seconds`` what getting it took; ``path`` the
    record's folder (None when nothing was saved).
    """

    forward: Callable[..., Any]
    warm: bool
    guards: bool
    seconds: float
    path: str | None
    # The Stitch cache entry the forward runs (None: not cached).
    cache_entry: str | None = None
    # The backend that compiled it in this process (None when loaded warm).
    backend: StitchBackend | None = None
    # The CUDA graphs of the forward: start-up capture (capture_sizes) and the
    # capture switch.  Unused when the forward runs no graphs.
    cudagraphs: CUDAGraphManager | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)


def aot_compile(
    model: torch.nn.Module,
    example_inputs: Sequence[Any] = (),
    config: CompilationConfig | None = None,
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    dynamic_dims: Mapping[int | str, Sequence[int]] | None = None,
    guards: bool | None = None,
    cudagraphs: CUDAGraphManager | None = None,
    backend: StitchBackend | None = None,
) -> AOTCompiledModel:
    """Compile ``model.forward`` with Stitch ahead of time, or load it as compiled before.

    ``example_inputs`` are the forward's positional arguments, ``example_kwargs``
    its keyword arguments (a transformers decode step:
    ``{"input_ids": ids, "past_key_values": static_cache, "use_cache": True}``);
    the saved forward is called the same way.  An object argument (the cache)
    is checked by the tensors the forward reads from it, and those it writes
    are never copied (NOTE: [the tensors of an object argument] in
    ``call_args.py``).
    ``dynamic_dims`` maps an input's position, or a keyword argument's name, to
    its dimensions that vary (the token count): they are marked
    ``mark_unbacked`` (one graph for every size, 1 included) only when the
    model is compiled, since marking imports Dynamo.
    Dimensions marked on the inputs beforehand count too.  The model is
    compiled for inference (under ``torch.no_grad()``); forward hooks do not
    run.  ``guards`` (default: ``$STITCH_AOT_GUARDS``) checks Dynamo's guards on
    every call, for debugging.  ``cudagraphs`` is the :class:`CUDAGraphManager`
    the forward's CUDA graphs use (default: a new one for ``config``); a saved
    forward runs the graphs it was compiled with, captured in this process.
    ``backend``: the :class:`StitchBackend` that compiles (its ``compiled``
    list reports it; its config and CUDA graphs are the ones used); default: a
    new one for ``config``.
    """
    start = time.perf_counter()
    if backend is not None:
        if (config is not None and config is not backend.config) or (
            cudagraphs is not None and cudagraphs is not backend.cudagraphs
        ):
            raise StitchConfigError(
                "aot_compile: a backend brings its config and CUDA graphs; "
                "give the backend alone"
            )
        config, cudagraphs = backend.config, backend.cudagraphs
    config = config if config is not None else CompilationConfig()
    if cudagraphs is None:
        cudagraphs = CUDAGraphManager(config)
    if guards is None:
        guards = os.environ.get(GUARDS_ENV, "") not in ("", "0")
    args = call_args(model, tuple(example_inputs), example_kwargs)
    dims = dynamic_spec(args, dims_by_position(args, dynamic_dims))
    # Only Inductor pieces are saved: the eager backend has nothing to load.
    saves = not config.disable_cache and config.backend == "inductor"
    folder = record_folder(model, config) if saves else None
    if folder is not None:
        try:
            loaded = load(model, args, dims, config, folder, guards, cudagraphs)
            if loaded is not None and not guards:  # NOTE in input_check.py
                checked = after_load(
                    model, loaded[0], folder, (config, cudagraphs, OPS)
                )
                loaded = (checked, loaded[1])
        except StaleRecord as exc:
            log.warning(
                "stitch aot: the saved %s is stale (%s); compiling it again",
                model_name(model),
                exc,
            )
        # read_record checked every field loading reads (aot_record.check_record):
        # a KeyError or TypeError here is a bug, and is raised as one.
        except (StitchCacheError, OSError, ValueError) as exc:
            log.warning(
                "stitch aot: the saved %s is unusable (%s); compiling it again",
                model_name(model),
                exc,
            )
        else:
            if loaded is not None:
                forward, entry = loaded
                seconds = time.perf_counter() - start
                log.info("stitch aot: %s loaded in %.2fs", model_name(model), seconds)
                return AOTCompiledModel(
                    forward, True, guards, seconds, folder, entry, None, cudagraphs
                )
    if backend is None:
        backend = StitchBackend(config, serializable=True)
        backend.cudagraphs = cudagraphs
    with marked_unbacked(args, dims):
        forward, saved = compile_and_save(
            model, args, dims, config, backend, folder, guards
        )
    if not guards:
        forward = after_compile(
            model,
            forward,
            saved,
            args,
            dims,
            backend.graph_inputs,
            (config, cudagraphs, OPS),
        )
    entry = backend.compiled[-1].cache_dir if backend.compiled else None
    seconds = time.perf_counter() - start
    return AOTCompiledModel(
        forward, False, guards, seconds, saved, entry, backend, cudagraphs
    )


# -- marking dynamic dims -------------------------------------------------------------


@contextlib.contextmanager
def marked_unbacked(
    args: Sequence[Any], dims: Sequence[Sequence[int]]
) -> Iterator[None]:
    """Mark the requested dims for Dynamo while compiling; the inputs are left as they were.

    Dynamo's marks are attributes of the tensor; a guarded call (``guards=True``)
    with a tensor still marked fails Dynamo's marking guard.
    """
    saved = [(a, dict(a.__dict__)) for a in args if isinstance(a, torch.Tensor)]
    for a, wanted in zip(args, dims, strict=False):
        if not isinstance(a, torch.Tensor):
            continue
        marked = dynamo.marked_dims(a)
        for d in wanted:
            if d not in marked:
                dynamo.mark_unbacked(a, d)
    try:
        yield
    finally:
        for a, attrs in saved:
            for name in set(a.__dict__) - set(attrs):
                delattr(a, name)
            a.__dict__.update(attrs)


# -- loading ------------------------------------------------------------------------------


def load(
    model: torch.nn.Module,
    args: Sequence[Any],
    dims: Sequence[Sequence[int]],
    config: CompilationConfig,
    folder: str,
    guards: bool,
    cudagraphs: CUDAGraphManager | None = None,
) -> tuple[Callable[..., Any], str] | None:
    """The saved forward bound to ``model`` and its cache entry (None if nothing was saved)."""
    record = read_record(folder)
    if record is None:
        return None
    reasons = stale_reasons(record, config, args, dims)
    if reasons:
        raise StaleRecord("; ".join(reasons))
    forward_globals = type(model).forward.__globals__
    root = cache_root(config)
    entry = reference_entry(record["stitched"], root)
    function = record["function"]
    if guards or not function.get("light"):
        if not record.get("torch_function_sha256"):
            raise StaleRecord(f"torch could not save its function ({TORCH_FILE})")
        data = read_file(folder, TORCH_FILE, record.get("torch_function_sha256"))
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
    code = marshal.loads(
        read_file(folder, BYTECODE_FILE, function.get("bytecode_sha256"))
    )
    if not isinstance(code, types.CodeType):
        raise StitchCacheError(f"{folder}/{BYTECODE_FILE} holds no code object")
    stitched = load_reference(record["stitched"], root, cudagraphs)
    closure = live_closure(type(model).forward, code, folder)
    forward = build_forward(code, function, forward_globals, stitched, closure)
    return types.MethodType(forward, model), entry


def build_forward(
    code: types.CodeType,
    function: dict[str, Any],
    forward_globals: dict[str, Any],
    stitched: Callable[..., Any],
    closure: tuple[Any, ...] | None = None,
) -> types.FunctionType:
    """Dynamo's transformed forward as a plain function calling ``stitched``.

    This is what torch's own loader builds (``GraphRuntimeEnv.forward_callable``)
    minus the guard manager, and with its modules imported only when used (see
    NOTE: [saved bytecode imports lazily] in ``compat/dynamo.py``).
    """
    f_globals = dict(forward_globals)
    f_globals.update(dynamo.bytecode_globals(function["import_sources"]))
    for name in function.get("builtins", ()):
        f_globals[name] = getattr(builtins, name)
    f_globals[function["backend_id"]] = stitched
    fn = types.FunctionType(
        code, f_globals, code.co_name, function.get("argdefs"), closure or None
    )
    if function.get("kwdefaults"):
        fn.__kwdefaults__ = dict(function["kwdefaults"])
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


# -- compiling ----------------------------------------------------------------------------


def compile_and_save(
    model: torch.nn.Module,
    args: Sequence[Any],
    dims: Sequence[Sequence[int]],
    config: CompilationConfig,
    backend: StitchBackend,
    folder: str | None,
    guards: bool,
    fallback: bool = True,
) -> tuple[Callable[..., Any], str | None]:
    """Trace and compile through torch's aot_compile; save the record when it can be.

    ``fallback``: when torch's aot_compile fails, run the model through
    torch.compile instead (else raise what it raised)."""
    positional, kwargs = split_args(args)
    try:
        with torch.no_grad():
            compiled = dynamo.aot_compile(
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
        return torch.compile(model, backend=backend, fullgraph=True), None
    artifacts = compiled._artifacts
    stitched = artifacts.compiled_fn
    assert isinstance(stitched, StitchFunction)  # serializable=True above
    env = artifacts.runtime_env
    function, why_not_light = function_record(
        artifacts, type(model).forward.__globals__
    )
    forward: Callable[..., Any]
    if guards or why_not_light:
        if not guards:
            compiled.disable_guard_check()
        forward = types.MethodType(compiled, model)
    else:
        forward = types.MethodType(
            build_forward(
                env.bytecode,
                function,
                type(model).forward.__globals__,
                stitched.fn,
                env.closure,
            ),
            model,
        )
    if folder is None:
        return forward, None
    files = {}
    try:
        reference = parse_reference(
            StitchFunction.serialize_compile_artifacts(stitched).decode("utf-8")
        )
        files[TORCH_FILE] = torch_file(compiled, why_not_light)
    except (
        Exception
    ) as exc:  # noqa: BLE001 - this process runs; the next compiles again
        log.warning(
            "stitch aot: %s cannot be saved (%s: %s); the next process compiles it again",
            model_name(model),
            type(exc).__name__,
            exc,
        )
        return forward, None
    torch_data = files.pop(TORCH_FILE)
    if torch_data:
        files[TORCH_FILE] = torch_data
    if not why_not_light:
        files[BYTECODE_FILE] = marshal.dumps(env.bytecode)
        function["bytecode_sha256"] = hashlib.sha256(files[BYTECODE_FILE]).hexdigest()
    else:
        log.info(
            "stitch aot: %s loads through torch's loader: %s",
            model_name(model),
            why_not_light,
        )
    record = {
        "format": RECORD_FORMAT,
        "model": model_name(model),
        "factors": literal(factors(config, args, dims)),
        "code": traced_code(artifacts.source_info.inlined_sources),
        "function": function,
        "stitched": reference,
        "torch_function_sha256": (
            hashlib.sha256(torch_data).hexdigest() if torch_data else None
        ),
    }
    try:
        write_record(folder, record, files)
    except OSError as exc:
        log.warning("stitch aot: could not write %s (%s)", folder, exc)
        return forward, None
    return forward, folder


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


def split_args(args: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(args, CallArgs):
        return args.split()
    return tuple(args), {}


# What input_check.py calls back for a signature compiled or loaded later.
OPS = AOTOps(load, compile_and_save, marked_unbacked)
