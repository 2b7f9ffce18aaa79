"""Dynamo: marking dims, ``torch.compile(...).aot_compile``, its saved function, restarts.

Every Dynamo module is imported inside the function that needs it: a warm
start that loads a saved forward never imports Dynamo.  The globals of
Dynamo's saved bytecode are saved_bytecode.py's job.
"""

from __future__ import annotations

import builtins
import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

# The tensor attributes mark_dynamic / mark_unbacked set.
_MARK_ATTRS = ("_dynamo_dynamic_indices", "_dynamo_unbacked_indices")


def marked_dims(t: torch.Tensor) -> set[int]:
    """The dims of ``t`` marked dynamic or unbacked (read without importing Dynamo)."""
    marked: set[int] = set()
    for attr in _MARK_ATTRS:
        marked |= set(getattr(t, attr, ()))
    return marked


def mark_unbacked(t: torch.Tensor, dim: int, shape_id: str | None = None) -> None:
    """Mark ``t``'s ``dim`` unbacked; dims of one ``shape_id`` are one size."""
    import torch._dynamo.decorators

    torch._dynamo.decorators.mark_unbacked(t, dim, shape_id=shape_id)


def backend_call_context() -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """The thread's state of the backend call under way (Dynamo's compile and
    tracing contexts, grad mode), to enter again on another thread (NOTE:
    [Dynamo's graph serves while the stitching is built])."""
    from torch._guards import CompileContext, TracingContext, compile_context, tracing

    compiling, traced = CompileContext.try_get(), TracingContext.try_get()
    grad = torch.is_grad_enabled()

    @contextlib.contextmanager
    def entered() -> Iterator[None]:
        with compile_context(compiling), tracing(traced), torch.set_grad_enabled(grad):
            yield

    return entered


# -- torch.compile(...).aot_compile --------------------------------------------------------


@contextlib.contextmanager
def aot_compile_enabled() -> Iterator[None]:
    """``torch.compile(fn).aot_compile`` available inside the block.

    NOTE: [aot_compile before torch 2.13]
    torch 2.11 and 2.12 attach ``aot_compile`` to a compiled function only while
    ``torch._dynamo.config.enable_aot_compile`` is set (False by default; True
    from 2.13 on): without it, ``aot_compile`` is missing and nothing is saved.
    Setting it for the one compile gives 2.11 the same save and warm start.
    """
    import torch._dynamo.config as config

    if getattr(config, "enable_aot_compile", True):
        yield
        return
    with config.patch(enable_aot_compile=True):
        yield


def aot_compile_on_by_default() -> bool:
    """Whether this torch offers ``aot_compile`` without the config switch."""
    import torch._dynamo.config as config

    return bool(getattr(config, "enable_aot_compile", True))


def aot_compile(
    fn: Callable[..., Any],
    backend: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """``torch.compile(fn, backend, fullgraph=True).aot_compile((args, kwargs))``,
    keeping only the guards torch can save (NOTE: [guards torch cannot save]).

    NOTE: [a saved forward does not depend on earlier compiles]
    Dynamo's automatic dynamic shapes make a size or scalar that differed from
    an earlier compile of the same code dynamic: two models in one process (a
    paged attention's ``scaling`` of another head size) made the second trace
    a float input and restart, which ``aot_compile`` does not survive, and a
    saved forward would depend on what the process compiled before.  It is
    off for this compile: the dims marked are the dynamic ones, as in a fresh
    process.
    """
    import torch._dynamo.config as config

    with (
        aot_compile_enabled(),
        config.patch(automatic_dynamic_shapes=False),
        _builtins_saved_with_the_bytecode(),
    ):
        return torch.compile(
            fn,
            backend=backend,
            fullgraph=True,
            options={"guard_filter_fn": savable_guards},
        ).aot_compile((args, dict(kwargs or {})))


@contextlib.contextmanager
def _builtins_saved_with_the_bytecode() -> Iterator[None]:
    """Builtins the transformed bytecode reads are among the globals torch saves with it.

    NOTE: [builtins the saved bytecode reads]
    Dynamo's bytecode for a transformers model loads ``type`` as a global (to
    rebuild the model's output).  torch 2.13 lists every builtin the bytecode
    loads among its ``used_globals``; torch 2.11 does not, and then refuses
    its own result at once (``forward_callable``: "Missing required external
    references: ['type']"), so no transformers model saved its forward and
    every warm process traced it again.  For the one compile, the runtime
    environment gets the builtins it names and lacks, as 2.13 gives them (a
    no-op there); the record rebinds them by name (``builtins`` in
    ``saved/compile.py``'s function record).
    """
    from torch._dynamo import convert_frame

    capture = getattr(convert_frame, "GraphCaptureOutput", None)
    original = getattr(capture, "get_runtime_env", None)
    if original is None:
        yield
        return

    def get_runtime_env(self: Any) -> Any:
        env = original(self)
        module = getattr(self, "f_globals", {})  # the module's own name wins
        for name in getattr(env, "external_refs", ()):
            if name not in module and hasattr(builtins, name):
                env.used_globals.setdefault(name, getattr(builtins, name))
        return env

    capture.get_runtime_env = get_runtime_env
    try:
        yield
    finally:
        capture.get_runtime_env = original


def savable_guards(entries: Sequence[Any]) -> list[bool]:
    """Which of Dynamo's guards ``aot_compile`` keeps (``guard_filter_fn``).

    NOTE: [guards torch cannot save]
    ``aot_compile`` refuses a guard it cannot serialize, and its default filter
    drops such guards by their own type only.  A transformers model's
    decorators (``merge_with_config_defaults`` reads ``func.__code__``) give a
    ``CONSTANT_MATCH`` guard *derived* from ``ID_MATCH``: kept by that filter,
    then refused, so no transformers model compiled.  This filter drops what
    torch's does and guards derived from an unsavable type too.  The saved
    forward checks its inputs with Stitch's own check, not these guards; what
    they guarded (code objects, closures of decorators) is the model's source,
    which the record pins by file hash (``saved/record.py``, ``traced_code``).
    """
    from torch._dynamo.guards import CheckFunctionManager

    unsavable = set(CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES)
    return [
        not (
            e.is_global
            or e.guard_type in unsavable
            or unsavable.intersection(e.derived_guard_types or ())
        )
        for e in entries
    ]


def serialize_aot(compiled: Any) -> bytes:
    """torch's own save of what :func:`aot_compile` returned."""
    from torch._dynamo.aot_compile import AOTCompiledFunction

    with aot_compile_enabled():
        return AOTCompiledFunction.serialize(compiled).serialized_data


def deserialize_aot(data: bytes, f_globals: dict[str, Any]) -> Any:
    """torch's loader of :func:`serialize_aot`'s bytes (checks Dynamo's guards)."""
    from torch._dynamo.aot_compile import AOTCompiledFunction

    with aot_compile_enabled():
        return AOTCompiledFunction.deserialize(data, f_globals=f_globals)


def register_serializable(cls: type) -> None:
    """Make ``cls`` a ``SerializableCallable``, the protocol aot_compile saves a backend's result by."""
    from torch._dynamo.aot_compile_types import SerializableCallable

    if not issubclass(cls, SerializableCallable):
        SerializableCallable.register(cls)


def in_aot_compile() -> bool:
    """Whether the backend is being called by ``torch.compile(...).aot_compile``.

    NOTE: [detecting torch's aot_compile]
    ``aot_compile_fullgraph`` calls the backend under a functorch config patch
    that only it makes inside a backend call (``bypass_autograd_cache_key``, in
    every supported release); that is how a default ``StitchBackend`` knows to
    return a saveable function without making every Dynamo-entered call go
    through one more layer.
    """
    config = sys.modules.get("torch._functorch.config")
    return bool(getattr(config, "bypass_autograd_cache_key", False))


# -- why a trace failed --------------------------------------------------------------------


def trace_failure(exc: BaseException) -> str | None:
    """Why Dynamo could not trace a model, in one line; None when ``exc`` is not
    Dynamo's (a backend's failure is its own error, not the model's).

    Dynamo's message opens with a one-line summary ("RuntimeError when making
    fake tensor call") and often an ``Explanation:`` line that names the op.
    """
    from torch._dynamo.exc import BackendCompilerFailed, TorchDynamoException

    if not isinstance(exc, TorchDynamoException) or isinstance(
        exc, BackendCompilerFailed
    ):
        return None
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    why = next((ln for ln in lines[1:] if ln.startswith("Explanation:")), "")
    return f"{lines[0]} ({why})" if why else lines[0]


# -- restarts ------------------------------------------------------------------------------


def is_restart(exc: BaseException) -> bool:
    """Whether ``exc`` asks Dynamo to trace the frame again (not a failure)."""
    from torch._dynamo.exc import RestartAnalysis

    return isinstance(exc, RestartAnalysis)


def restart_specializing(names: list[str]) -> list[str]:
    """Mark the float symbols ``names`` for specialization; those newly marked.

    The caller raises :func:`tensorify_restart` when the list is not empty.
    Returns [] on a torch without the mechanism.
    """
    try:
        from torch._dynamo.symbolic_convert import TensorifyState
    except ImportError:  # pragma: no cover - not in any supported release
        return []
    new = [n for n in names if not TensorifyState.should_specialize(n)]
    for name in new:
        TensorifyState.specialize(name)
    return new


def forget_specializing(names: list[str]) -> None:
    """Unmark float symbols :func:`restart_specializing` marked."""
    if not names:
        return
    from torch._dynamo.symbolic_convert import TensorifyState

    for name in names:
        TensorifyState.force_specializations.discard(name)


def tensorify_restart() -> BaseException:
    from torch._dynamo.exc import TensorifyScalarRestartAnalysis

    return TensorifyScalarRestartAnalysis()


def tensor_guards(*examples: torch.Tensor, **kwargs: Any) -> Any:
    """Dynamo's C++ ``TensorGuards`` over ``examples`` (dtype, device, sizes,
    strides; ``dynamic_dims_sizes``/``dynamic_dims_strides`` as torch takes them).

    It lives in ``torch._C``: building one imports no Dynamo Python code.
    """
    from torch._C._dynamo.guards import TensorGuards

    return TensorGuards(*examples, **kwargs)


def dynamo_counters() -> Any:
    """Dynamo's ``counters`` (a dict of Counters by category); imports Dynamo."""
    from torch._dynamo.utils import counters

    return counters


def reset() -> None:
    """Forget every compiled frame (``torch._dynamo.reset``)."""
    import torch._dynamo

    torch._dynamo.reset()
