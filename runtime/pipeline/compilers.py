"""Piece compilers behind one small interface: Inductor (standalone_compile) and eager."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch.fx as fx

from stitch.codegen.errors import StitchCacheError, StitchRuntimeError

from ..counter import compilation_counter

log = logging.getLogger("stitch")

Runnable = Callable[..., Any]


class CompilerAdapter(Protocol):
    """Compiles one piece for one shape target and (optionally) saves/loads it."""

    name: str
    saves_artifacts: bool

    def compile(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any], *, static: bool
    ) -> tuple[Runnable, Any]:
        """Return ``(runnable, handle)``; ``handle`` is what :meth:`save` writes."""
        ...

    def save(self, handle: Any, path: str) -> None: ...

    def load(self, path: str) -> Runnable: ...

    def generated_source(self, handle: Any) -> str | None:
        """The code the compile generated, when it can be read (else None)."""
        ...


class EagerAdapter:
    """Runs the piece's GraphModule as it is (no compilation, nothing saved)."""

    name = "eager"
    saves_artifacts = False

    def compile(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any], *, static: bool
    ) -> tuple[Runnable, Any]:
        return gm.forward, None

    def save(self, handle: Any, path: str) -> None:  # pragma: no cover - never called
        raise StitchRuntimeError("the eager backend saves no artifacts")

    def load(self, path: str) -> Runnable:  # pragma: no cover - never called
        raise StitchRuntimeError("the eager backend saves no artifacts")

    def generated_source(self, handle: Any) -> str | None:
        # The GraphModule itself runs: its strings are always live.
        return None


def _tupled(fn: Runnable) -> Runnable:
    # Inductor graphs return a tuple/list even for one output when the piece
    # returned a bare value; split_module pieces with one output return it bare.
    def call(*args: Any) -> Any:
        out = fn(*args)
        return out[0]

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


class InductorAdapter:
    """``torch._inductor.standalone_compile`` with binary save/load of artifacts."""

    name = "inductor"
    saves_artifacts = True

    def __init__(self, config_patches: dict[str, Any]) -> None:
        self.config_patches = dict(config_patches)

    def compile(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any], *, static: bool
    ) -> tuple[Runnable, Any]:
        from torch._inductor import standalone_compile

        gm, unwrap = _tuple_output(gm)
        # NOTE: [static sizes compile from example inputs]
        # A static size is compiled from concrete example inputs in a fresh fake
        # mode ("from_example_inputs"), which specializes every shape; the general
        # and range targets reuse Dynamo's fake mode and its symbolic shapes.
        dynamic_shapes = "from_example_inputs" if static else "from_tracing_context"
        compilation_counter.num_inductor_compiles += 1
        try:
            artifact = standalone_compile(
                gm,
                list(example_inputs),
                dynamic_shapes=dynamic_shapes,
                options={"config_patches": self.config_patches},
            )
        except Exception as exc:
            if is_dynamo_restart(exc):
                raise
            raise StitchRuntimeError(
                f"Inductor failed to compile a piece ({type(exc).__name__}: {exc})"
            ) from exc
        return (_tupled(artifact) if unwrap else artifact), (artifact, unwrap)

    def save(self, handle: Any, path: str) -> None:
        artifact, unwrap = handle
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".bin")
        os.close(fd)
        try:
            artifact.save(path=tmp, format="binary")
            os.replace(tmp, path)
        except Exception as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StitchCacheError(f"could not save artifact {path}: {exc}") from exc
        compilation_counter.num_compiled_artifacts_saved += 1

    def generated_source(self, handle: Any) -> str | None:
        # The compiled graph (with its generated wrapper and kernels) sits at the
        # end of the __wrapped__ chain of the artifact's callable.  Should a torch
        # version not expose it, None makes the caller assume the code depends on
        # everything (no sharing): slower, never wrong.
        fn = getattr(handle[0], "_compiled_fn", None)
        for _ in range(16):
            if fn is None:
                return None
            source = getattr(fn, "source_code", None)
            if isinstance(source, str):
                return source
            fn = getattr(fn, "__wrapped__", None)
        return None

    def load(self, path: str, unwrap: bool = False) -> Runnable:
        from torch._inductor import CompiledArtifact

        try:
            artifact = CompiledArtifact.load(path=path, format="binary")
        except Exception as exc:
            raise StitchCacheError(
                f"failed to load ({type(exc).__name__}: {exc})"
            ) from exc
        compilation_counter.num_compiled_artifacts_loaded += 1
        return _tupled(artifact) if unwrap else artifact


def is_dynamo_restart(exc: BaseException) -> bool:
    """Whether ``exc`` asks Dynamo to trace the frame again (not a failure).

    NOTE: [restarts pass through]
    Inductor's ``tensorify_python_scalars`` pass raises
    ``TensorifyScalarRestartAnalysis`` when a float that Dynamo lifted to a
    graph input cannot stay symbolic (it feeds an op that needs a Python
    float); Dynamo catches it, specializes that float and traces again.  Wrapped
    in a StitchRuntimeError it would be a hard failure, so it goes through.
    """
    from torch._dynamo.exc import RestartAnalysis

    return isinstance(exc, RestartAnalysis)


def _tuple_output(gm: fx.GraphModule) -> tuple[fx.GraphModule, bool]:
    """Inductor wants a tuple/list output; wrap a bare one (returns a copy)."""
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    if isinstance(output.args[0], (tuple, list)):
        return gm, False
    new_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            new_graph.output((env[node.args[0]],) if isinstance(node.args[0], fx.Node) else (node.args[0],))
        else:
            env[node] = new_graph.node_copy(node, lambda n: env[n])
    wrapped = fx.GraphModule(gm, new_graph)
    wrapped.meta.update(gm.meta)
    return wrapped, True


@functools.cache
def start_inductor_warmup() -> threading.Thread:
    """Probe the CPU's vector ISA for Inductor in the background (once).

    NOTE: [Inductor warm-up overlaps Dynamo tracing]
    The first compile or artifact load in a process probes the CPU's vector ISA
    with a C++ dry compile: about a second, much of a warm start.  A backend
    object is made before torch.compile traces the model, so starting the probe
    then hides it behind Dynamo's tracing; it fills the cache Inductor would fill
    on first use anyway.  Every module involved is imported here, in the calling
    thread, first: two threads importing torch's modules at once can see each
    other's half-initialized modules.
    """
    import torch._dynamo  # noqa: F401
    import torch._inductor.compile_fx  # noqa: F401
    from torch._inductor import codecache, cpp_builder, cpu_vec_isa  # noqa: F401

    def probe() -> None:
        try:
            cpu_vec_isa.pick_vec_isa()
        except Exception:  # noqa: BLE001 - the real compile reports real errors
            log.debug("Inductor ISA probe failed", exc_info=True)

    thread = threading.Thread(target=probe, name="stitch-isa-probe", daemon=True)
    thread.start()
    return thread


def make_adapter(backend: str, config_patches: dict[str, Any]) -> CompilerAdapter:
    if backend == "inductor":
        return InductorAdapter(config_patches)
    if backend == "eager":
        return EagerAdapter()
    raise StitchRuntimeError(f"unknown compiler backend {backend!r}")
