"""Piece compilers behind one small interface: Inductor (standalone_compile) and eager."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any, Protocol

import torch.fx as fx

from stitch.core.errors import StitchCacheError, StitchRuntimeError

from ..compat import dynamo, inductor
from ..counter import compilation_counter
from .inductor_warmup import inductor_ready, start_inductor_warmup
from .lifted_floats import floats_marked, specialize_lifted_floats
from .piecewise import Runnable
from .prebuilt.record_io import load_prebuilt_or_none, write_prebuilt_record

log = logging.getLogger("stitch")


class ArtifactStore(Protocol):
    """A backend's compiled pieces as files: saved into the cache entry,
    published there, loaded by a later start (``CompilerAdapter.artifacts``)."""

    def save(self, handle: Any, path: str) -> None:
        """Write the compile's ``handle`` (:meth:`CompilerAdapter.compile`) at ``path``."""
        ...

    def published(self, path: str, unwrap: bool) -> Runnable | None:
        """The saved artifact's final place, once the store has published it; a
        faster runnable of the same compiled code, when there is one."""
        ...

    def load(
        self, path: str, unwrap: bool = False, sha256: str | None = None
    ) -> Runnable: ...


class CompilerAdapter(Protocol):
    """Compiles one piece for one shape target: the verbs every backend fills.
    A backend whose compiled pieces are files (and so start warm) has
    ``artifacts``; one that saves nothing has None there."""

    name: str
    artifacts: ArtifactStore | None

    def compile(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any], *, static: bool
    ) -> tuple[Runnable, Any]:
        """Return ``(runnable, handle)``; ``handle`` is what ``artifacts.save`` writes."""
        ...

    def generated_source(self, handle: Any) -> str | None:
        """The code the compile generated, when it can be read (else None)."""
        ...

    def prepare(self, gm: fx.GraphModule, fake_inputs: Sequence[Any]) -> None:
        """Adjust the graph (before its key) and its fake inputs before any piece is planned."""
        ...

    def warm_up(self, cpu: bool) -> None:
        """Start what a cold compile will wait for, beside the split."""
        ...


class EagerAdapter:
    """Runs the piece's GraphModule as it is (no compilation, nothing saved)."""

    name = "eager"
    artifacts: ArtifactStore | None = None

    def compile(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any], *, static: bool
    ) -> tuple[Runnable, Any]:
        return gm.forward, None

    def generated_source(self, handle: Any) -> str | None:
        # The GraphModule itself runs: its strings are always live.
        return None

    def prepare(self, gm: fx.GraphModule, fake_inputs: Sequence[Any]) -> None:
        # Eager pieces run lifted floats as they are.
        pass

    def warm_up(self, cpu: bool) -> None:
        pass


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

    def __init__(
        self,
        config_patches: dict[str, Any],
        passes: Sequence[Any] = (),
        static_patches: dict[str, Any] | None = None,
    ) -> None:
        self.config_patches = dict(config_patches)
        self.static_patches = dict(static_patches or {})
        self.passes = list(passes)
        self._patches: dict[str, Any] | None = None
        # Damaged prebuilt files already warned about (one warning per file).
        self._faults: set[str] = set()
        # Its pieces are files: saved, published and loaded by the methods below.
        self.artifacts: ArtifactStore | None = self

    def compile(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any], *, static: bool
    ) -> tuple[Runnable, Any]:
        inductor_ready()
        gm, unwrap = _tuple_output(gm)
        # NOTE: [static sizes compile from example inputs]
        # A static size is compiled from concrete example inputs in a fresh fake
        # mode ("from_example_inputs"), which specializes every shape; the general
        # and range targets reuse Dynamo's fake mode and its symbolic shapes.
        dynamic_shapes = "from_example_inputs" if static else "from_tracing_context"
        compilation_counter.num_inductor_compiles += 1
        try:
            with floats_marked(example_inputs):
                artifact = inductor.standalone_compile(
                    gm,
                    example_inputs,
                    dynamic_shapes=dynamic_shapes,
                    config_patches=self.inductor_config(static),
                )
        except Exception as exc:
            if is_dynamo_restart(exc):
                raise
            failed_pass = _pass_error(exc)
            if failed_pass is not None:
                raise StitchRuntimeError(str(failed_pass)) from failed_pass
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

    def published(self, path: str, unwrap: bool) -> Runnable | None:
        """The artifact saved by :meth:`save` now lives at ``path`` for good (the
        store stages it elsewhere first): record its prebuilt form there, and
        return that form's runnable (None when the piece has none).

        NOTE: [the compiling process runs its pieces prebuilt too]
        Inductor's artifact calls its compiled ``call`` through AOTAutograd's
        runtime wrappers, a Dynamo-disabled frame and the artifact's own
        ``__call__``: about ten Python frames per piece call, paid per piece on
        every forward (a 9-piece decode step of an 8-layer transformers Llama:
        0.1-0.2 ms of 2 ms on the 2-core machine).  The prebuilt runnable calls
        the same ``call`` of the same kernels with only what those wrappers do
        for such a piece (NOTE: [what AOTAutograd's inference wrapper does
        here], prebuilt/load.py), so the process that compiled a piece runs it the
        way every later process does.
        """
        sha256 = write_prebuilt_record(path)
        if sha256 is None:
            return None
        from .prebuilt.load import PrebuiltUnavailable, load_prebuilt

        try:
            runnable = load_prebuilt(path, sha256)
        except (PrebuiltUnavailable, StitchCacheError) as exc:
            log.debug("stitch: %s runs through Inductor's wrappers: %s", path, exc)
            return None
        return _tupled(runnable) if unwrap else runnable

    def inductor_config(self, static: bool = False) -> dict[str, Any]:
        """Inductor's config patches, with Stitch's own and the configured passes
        as its post-grad pass (NOTE: [Stitch's own passes run on every piece]);
        for a static size, with that size's options over them.

        NOTE: [options of one size]
        ``compile_sizes_inductor_config`` applies to the compiles of static
        sizes only: the general and range runnables, which serve every other
        size, keep ``inductor_compile_config`` alone.  The options enter the
        config hash (when set), so every artifact of the entry was compiled
        under them; the piece's content key does not need them.
        """
        if self._patches is None:
            from ..passes.post_grad_hook import with_piece_passes

            self._patches = with_piece_passes(self.config_patches, self.passes)
        if static and self.static_patches:
            return {**self._patches, **self.static_patches}
        return self._patches

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

    def prepare(self, gm: fx.GraphModule, fake_inputs: Sequence[Any]) -> None:
        # NOTE: [lifted floats are specialized up front] (lifted_floats.py), for
        # Inductor's tensorify pass.
        specialize_lifted_floats(gm, fake_inputs)

    def warm_up(self, cpu: bool) -> None:
        start_inductor_warmup(cpu=cpu)

    def load(
        self, path: str, unwrap: bool = False, sha256: str | None = None
    ) -> Runnable:
        """The saved piece at ``path``: prebuilt when it can be, else through Inductor.

        See NOTE: [prebuilt pieces]: a prebuilt load imports no Inductor module
        and builds no kernel, so it does not wait for the Inductor warm-up.
        """
        runnable = load_prebuilt_or_none(path, sha256, self._faults)
        if runnable is None:
            inductor_ready()
            try:
                runnable = inductor.load_artifact(path)
            except Exception as exc:
                raise StitchCacheError(
                    f"failed to load ({type(exc).__name__}: {exc})"
                ) from exc
            # Loaded through Inductor, so its kernels are built now: record them
            # and the next process loads this piece prebuilt.
            write_prebuilt_record(path)
        compilation_counter.num_compiled_artifacts_loaded += 1
        return _tupled(runnable) if unwrap else runnable


def is_dynamo_restart(exc: BaseException) -> bool:
    """Whether ``exc`` asks Dynamo to trace the frame again (not a failure).

    NOTE: [restarts pass through]
    Inductor's ``tensorify_python_scalars`` pass raises
    ``TensorifyScalarRestartAnalysis`` when a float that Dynamo lifted to a
    graph input cannot stay symbolic (it feeds an op that needs a Python
    float); Dynamo catches it, specializes that float and traces again.  Wrapped
    in a StitchRuntimeError it would be a hard failure, so it goes through.
    """
    return dynamo.is_restart(exc)


def _tuple_output(gm: fx.GraphModule) -> tuple[fx.GraphModule, bool]:
    """Inductor wants a tuple/list output; wrap a bare one (returns a copy)."""
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    if isinstance(output.args[0], (tuple, list)):
        return gm, False
    new_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            new_graph.output(
                (env[node.args[0]],)
                if isinstance(node.args[0], fx.Node)
                else (node.args[0],)
            )
        else:
            env[node] = new_graph.node_copy(node, lambda n: env[n])
    wrapped = fx.GraphModule(gm, new_graph)
    wrapped.meta.update(gm.meta)
    return wrapped, True


def _pass_error(exc: BaseException) -> Exception | None:
    from ..passes.post_grad_hook import find_pass_error

    return find_pass_error(exc)


# The compiler backends by ``CompilationConfig.backend``.
ADAPTERS: dict[str, Any] = {"inductor": InductorAdapter, "eager": EagerAdapter}


def make_adapter(
    backend: str,
    config_patches: dict[str, Any],
    passes: Sequence[Any] = (),
    static_patches: dict[str, Any] | None = None,
) -> CompilerAdapter:
    if backend == "inductor":
        return InductorAdapter(config_patches, passes, static_patches)
    if backend == "eager":
        return EagerAdapter()
    raise StitchRuntimeError(f"unknown compiler backend {backend!r}")
