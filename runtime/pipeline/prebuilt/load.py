"""Prebuilt pieces: run a compiled piece from its saved wrapper code and built kernels, without Inductor.

NOTE: [prebuilt pieces]
``CompiledArtifact.load`` imports Inductor (seconds), probes the CPU's vector ISA
(a C++ build and a child process) and, when Inductor's own cache is empty,
rebuilds every C++ kernel of the piece: a warm start then costs about as much
as compiling.  What running a CPU piece actually needs is small: the Python
wrapper module Inductor generated (its ``call(args)``), the kernel libraries it
loads, and two facts of AOTAutograd's runtime wrapper (grad mode off, version
bumps of inputs mutated in the graph).  When a piece is saved, Stitch writes
those beside the artifacts of the cache entry (``save.py``):
``prebuilt/<key>.prebuilt`` holds the wrapper source and the kernel table,
``prebuilt/kernels/<sha256>.so`` the built libraries.

Loading execs the wrapper source (``inductor_stand_ins.py``) with the imports
that would pull in Inductor answered by stand-ins: ``AsyncCompile.cpp_pybinding``
returns the prebuilt kernel for its source instead of building it,
``extern_kernels.<name>`` is the
torch function recorded at save time, and the few helper functions import
their real module only if they are ever called.  Every other import is the real
one; a CUDA piece's Triton kernels: NOTE: [prebuilt Triton kernels].  A piece
whose wrapper needs anything else (constants, outputs aliasing each other or an
intermediate, ...) gets no record and loads through Inductor as before.

A record is used only on a machine like the one that built it (same CPU flags,
Python and torch; for Triton kernels, the same GPU, CUDA and Triton).  The
record and kernels are the artifact's extra files (``store/extras.py``), listed
with sizes and sha256 when written, each trust-checked and verified against
that list before it is read or loaded.  No import of Inductor or Dynamo here.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from stitch.core.errors import StitchCacheError

from ...compat import inductor
from ...compat.versions import gpu_fingerprint
from ...store import codec, location
from ...store.artifacts import PREBUILT_DIR
from ...store.digests import content_hash, key_hash
from ...store.extras import Extras, NoExtras, open_extras
from ...store.location import PREBUILT_SUFFIX  # noqa: F401 - re-exported
from ...store.records import (
    PREBUILT_FORMAT,  # noqa: F401 - re-exported
    PrebuiltRecord,
    as_data,
)
from ..piecewise import Runnable
from .inductor_stand_ins import (
    PrebuiltUnavailable,
    exec_wrapper,
    resolve_externs,
)
from .triton_kernels import (
    KERNELS_DIR,
    aligned_call,
    cubin_name,  # noqa: F401 - re-exported
    cuda_available,
    load_triton,
    triton_key,
)

NO_RECORD = "no prebuilt record"


def prebuilt_path(artifact_path: str) -> str:
    """``<entry>/prebuilt/<key>.prebuilt``: one record per artifact, named by its key."""
    _, entry, _ = location.locate_artifact(artifact_path)
    return location.extra_path(entry, record_name(artifact_path))


def record_name(artifact_path: str) -> str:
    """The record's name as an extra file of the artifact (``prebuilt/<key>.prebuilt``)."""
    return location.prebuilt_name(location.locate_artifact(artifact_path)[2])


def kernel_name(sha256: str) -> str:
    """A kernel library's name as an extra file (``prebuilt/kernels/<sha256>.so``)."""
    return f"{PREBUILT_DIR}/{KERNELS_DIR}/{sha256}.so"


def kernel_key(argtypes: Sequence[str], source: str) -> str:
    """The content key of one kernel: its argument types and C++ source."""
    return content_hash((repr(list(argtypes)) + "\0" + source).encode())


@functools.cache
def machine_fingerprint() -> str:
    """What a built kernel depends on: CPU architecture and flags, Python, torch."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
                    break
    except OSError:
        flags = platform.processor()
    parts = (
        platform.machine(),
        flags,
        sys.implementation.cache_tag or "",
        str(torch.__version__),
    )
    return key_hash(*parts)


# -- the record file ---------------------------------------------------------------


def render_record(data: dict[str, Any]) -> str:
    """The text of a prebuilt record (``data``: its fields, as :func:`read_record`
    gives them); sealed, so an edit is noticed."""
    body = {k: v for k, v in data.items() if k not in codec.ENVELOPE + (codec.CHECK,)}
    return codec.render(codec.convert(PrebuiltRecord, body, "a prebuilt record"))


def read_record(path: str) -> dict[str, Any]:
    """The record at ``path``, read directly (for inspection and tests; loading
    reads it through the artifact's extras).  :class:`StitchCacheError` if damaged."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise PrebuiltUnavailable(NO_RECORD) from None
    except OSError as exc:
        raise StitchCacheError(f"{path} is unreadable ({exc})") from None
    return as_data(parse_record(data, path))


def parse_record(data: bytes, path: str) -> PrebuiltRecord:
    """The record in ``data`` (read from ``path``); one written by another Stitch
    is unavailable, not damaged."""
    try:
        return codec.decode(PrebuiltRecord, data, path)
    except codec.StaleRecord as exc:
        raise PrebuiltUnavailable(f"{path} has another format ({exc.detail})") from None


# -- loading -----------------------------------------------------------------------


def load_prebuilt(artifact_path: str, artifact_sha256: str | None = None) -> Runnable:
    """The runnable of the piece saved at ``artifact_path``, from its prebuilt record.

    Raises :class:`PrebuiltUnavailable` when there is no record for this machine
    and :class:`StitchCacheError` (an ``ExtraFileError`` naming the file) when
    the record, a kernel or their list is missing, truncated or changed.
    Nothing is read, imported or loaded before it is verified.
    """
    path = prebuilt_path(artifact_path)
    try:
        extras = open_extras(artifact_path, artifact_sha256)
    except NoExtras:
        raise PrebuiltUnavailable(NO_RECORD) from None
    record = parse_record(extras.read(record_name(artifact_path)), path)
    if record.machine != machine_fingerprint():
        raise PrebuiltUnavailable(
            "built on another machine (CPU flags, Python or torch)"
        )
    if artifact_sha256 is not None and record.artifact_sha256 != artifact_sha256:
        # Stale, not damaged: the artifact was rewritten (and is checked on its own).
        raise PrebuiltUnavailable("made from another version of the artifact")
    if record.triton:
        devices = {k.device for k in record.triton.values()}
        here = {d: gpu_fingerprint(d) for d in devices} if cuda_available() else {}
        if any(here.get(d) != record.gpu for d in devices):
            raise PrebuiltUnavailable(
                f"its Triton kernels were built for {record.gpu}, this GPU is "
                f"{', '.join(sorted(set(here.values()))) or 'absent'}"
            )
    kernels = record.kernels

    def kernel(argtypes: Sequence[str], kernel_source: str) -> Any:
        entry = kernels.get(kernel_key(argtypes, kernel_source))
        if not isinstance(entry, str):
            raise StitchCacheError(
                f"{path}: the wrapper asks for a kernel it does not list"
            )
        return load_kernel(extras, entry)

    def triton(name: str, kernel_source: str, device_str: str = "cuda") -> Any:
        entry = record.triton.get(triton_key(name, kernel_source))
        if entry is None:
            raise StitchCacheError(
                f"{path}: the wrapper asks for a Triton kernel it does not list ({name})"
            )
        return load_triton(extras, name, entry)

    filename = f"<stitch-prebuilt-{record.artifact_sha256[:12]}>"
    try:
        namespace = exec_wrapper(
            record.wrapper,
            filename,
            kernel,
            resolve_externs(record.extern_kernels),
            triton,
        )
    except (StitchCacheError, PrebuiltUnavailable):
        raise
    except Exception as exc:  # e.g. an op the pieces call is not registered here
        raise StitchCacheError(
            f"{path}: the wrapper does not run ({type(exc).__name__}: {exc})"
        ) from exc
    call = namespace.get("call")
    if not callable(call):
        raise StitchCacheError(f"{path}: the wrapper defines no call()")
    return piece_runnable(
        call, tuple(record.increment_version), tuple(record.align_inputs)
    )


def load_kernel(extras: Extras, sha256: str) -> Any:
    """The ``kernel`` function of a prebuilt Python-extension kernel library,
    verified as an extra file of the artifact before it is loaded."""
    name = f"stitch_prebuilt_{sha256[:24]}.kernel"
    module = sys.modules.get(name)
    if module is None:
        extra = kernel_name(sha256)
        path = extras.verified_path(extra)
        if extras.record.files[extra].sha256 != sha256:
            raise StitchCacheError(
                f"{extras.list_path}: lists {extra} with another sha256"
            )
        # Inductor's loader publishes this pointer for the kernel's argument
        # parsing before loading a kernel library; so do we.
        inductor.publish_tensor_data_ptr()
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise StitchCacheError(f"kernel {path} cannot be imported")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except ImportError as exc:
            raise StitchCacheError(f"kernel {path} does not load ({exc})") from None
        sys.modules[name] = module
    return module.kernel  # type: ignore[attr-defined]


def piece_runnable(
    call: Callable[[list[Any]], Any],
    increment: tuple[int, ...],
    align: tuple[int, ...] = (),
) -> Runnable:
    """``runnable(*args)`` as AOTAutograd's inference wrapper runs ``call``.

    NOTE: [what AOTAutograd's inference wrapper does here]
    For a piece with no aliased outputs but views of its inputs (NOTE: [a
    piece's output that views its input]), no mutations applied outside the
    graph, RNG functionalization, subclasses or effect tokens (the only kind
    that gets a record), its runtime wrapper bumps the version counter of the
    inputs the graph mutates, turns grad mode off around the call, and runs it
    with autocast disabled when autocast was on as the piece was loaded.
    """
    is_grad = torch.is_grad_enabled
    set_grad = torch._C._set_grad_enabled
    disable_amp = torch._C._is_any_autocast_enabled()
    if align:
        call = aligned_call(call, align)

    def run_plain(*args: Any) -> Any:
        if is_grad():
            set_grad(False)
            try:
                return call(list(args))
            finally:
                set_grad(True)
        return call(list(args))

    if not increment and not disable_amp:
        run_plain.__wrapped__ = call  # type: ignore[attr-defined]
        return run_plain
    if increment:
        from torch.autograd.graph import increment_version

    def run(*args: Any) -> Any:
        if increment:
            increment_version(tuple(args[i] for i in increment))
        if disable_amp:
            with torch._C._DisableAutocast():
                return run_plain(*args)
        # run_plain's body, inlined: one frame less per piece call.
        if is_grad():
            return run_plain(*args)
        return call(list(args))

    run.__wrapped__ = call  # type: ignore[attr-defined]
    return run
