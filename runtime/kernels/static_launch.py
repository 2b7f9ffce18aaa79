"""Prebuilt kernels: Stitch's own ops' Triton kernels, saved as cubins by the
process that compiled them and launched by later processes from those binaries
through torch's static launcher, without importing Triton.

NOTE: [an op's Triton kernel without Triton]
A warm process loads its pieces' Triton kernels prebuilt (NOTE: [prebuilt
Triton kernels] in pipeline/prebuilt/triton_kernels.py), but ``stitch::attention`` and
``stitch::paged_attention`` are splitting ops, not pieces: their kernels went
through Triton's JIT on the first launch, which cost about 0.92 s of the 2.03 s
warm restart on the H100 (``import triton`` 0.28 s, Triton hashing its own
sources 0.44 s, the JIT's lookup 0.15-0.2 s; docs/performance.md).  So the
process that compiles a kernel saves it: for each specialization
(:func:`specialization_key`: constexprs, dtypes, pointers' 16-byte alignment,
integers equal to 1, divisible by 16 or beyond int32, which are what Triton
specializes on), the cubin and what launching it takes (function
name, warps, shared memory, one type per launched argument, which arguments
are launched) go to ``<root>/kernels/<op>/`` (NOTE: [the root Stitch's ops
keep their kernels under] in store/location.py), named by a key hash of the op,
the specialization, the GPU (model, architecture, CUDA, Triton) and the kernel
module's source.  A later process with the same key finds the record, checks
it (trusted folder, sealed record, the cubin's sha256, every field it was saved
for) and launches the cubin through ``torch._C._StaticCudaLauncher``, the
launcher the prebuilt pieces use.  Any check that fails is one warning naming
the file, and that specialization goes through Triton as before.  Triton's
launch hooks (profilers such as proton) are not called for a prebuilt kernel's
launch, as for Inductor's statically launched kernels.

Each file is written through a rename, the cubin (named by its sha256) before
its record, so a reader sees a whole record naming a cubin that is there, even
when processes save the same kernel at once.  A kernel compiled before the
process opened any entry (an eager run first) is saved on the op's first call
after one is opened.  The files are not part of any entry: ``stitch cache``
leaves ``kernels/`` alone, and the fleet store does not carry them (a replica
compiles its own on its first launch, about a second).  ``STITCH_KEEP_KERNELS=0``
turns saving and launching prebuilt kernels off.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import torch

from stitch.core.errors import StitchError, StitchRuntimeError

from ..compat.static_launcher import launcher, load_function
from ..compat.versions import gpu_fingerprint
from ..store import location
from ..store.digests import content_hash
from ..store.records import OpKernelRecord
from .kernel_records import (
    find_kernel,
    find_kernels,
    kernel_name,
    launch_facts,
    save_kernel,
)

log = logging.getLogger("stitch")

# Where one specialization's kernel is saved: folder, cache root, name, and the
# fields its record must hold.
Where = tuple[str, str, str, dict[str, Any]]
# A loaded kernel: how it is launched (NOTE: [a prebuilt kernel launches on its
# tensors' device]), its CUfunction, its record.
Loaded = tuple[Callable[..., Any], int, OpKernelRecord]


def specialization_key(
    device: int,
    args: tuple[Any, ...],
    constexprs: tuple[Any, ...],
    *,
    pointers: int,
    floats: int,
) -> tuple[Any, ...]:
    """What Triton specializes a kernel on, for ``args`` in the kernel's order:
    ``pointers`` tensors first (dtype, 16-byte alignment), then ``floats``
    floats (no specialization), then integers (equal to 1, divisible by 16,
    within int32); the constexprs and the device."""
    tensors = args[:pointers]
    ints = args[pointers + floats :]
    return (
        device,
        constexprs,
        tuple(t.dtype for t in tensors),
        tuple(t.data_ptr() % 16 == 0 for t in tensors),
        tuple((i == 1) + 2 * (i % 16 == 0) + 4 * (-(2**31) <= i < 2**31) for i in ints),
    )


@functools.cache
def enabled() -> bool:
    """Whether kernels are saved, and prebuilt ones launched: not with
    ``STITCH_KEEP_KERNELS=0``, under Triton's interpreter or without CUDA
    (asked once)."""
    return (
        os.environ.get("STITCH_KEEP_KERNELS", "1") != "0"
        and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
        and torch.cuda.is_available()
    )


def specialization_text(key: tuple[Any, ...]) -> str:
    """``launch``'s specialization key as text, the device index left out."""
    _device, constexprs, dtypes, aligned, ints = key
    return repr((constexprs, tuple(str(d) for d in dtypes), aligned, ints))


@functools.cache
def gpu_of(device: int) -> str:
    """The GPU a cubin for ``device`` is built for (asked once a device)."""
    return gpu_fingerprint(device)


class PrebuiltKernels:
    """One op's prebuilt kernels: :meth:`launch` one (False: none saved for that
    key), :meth:`save` one Triton compiled (NOTE: [an op's Triton kernel without Triton]).
    """

    def __init__(self, op: str, source_file: str) -> None:
        self.op = op
        self.source_file = source_file
        # key -> what launches it, or None: looked up, none usable (Triton's
        # JIT serves that key in this process).
        self._loaded: dict[tuple[Any, ...], Loaded | None] = {}
        # device -> name -> every kernel saved for this op and the device's GPU,
        # loaded at the device's first call outside a CUDA graph capture.
        self._preloaded: dict[int, dict[str, Loaded]] = {}
        # Compiled before this process noted a cache root: saved once it has one.
        self._pending: dict[tuple[Any, ...], Any] = {}
        self._saved: set[tuple[Any, ...]] = set()
        self._told: set[str] = set()

    @functools.cached_property
    def source_sha256(self) -> str:
        with open(self.source_file, "rb") as f:
            return content_hash(f.read())

    def _where(self, key: tuple[Any, ...]) -> Where | None:
        root = location.kernel_root()
        if root is None:
            return None
        fields = {
            "op": self.op,
            "specialization": specialization_text(key),
            "gpu": gpu_of(key[0]),
            "source_sha256": self.source_sha256,
        }
        return location.kernel_folder(root, self.op), root, kernel_name(fields), fields

    def _tell(self, what: str, message: str) -> None:
        if what not in self._told:
            self._told.add(what)
            log.warning(
                "stitch: %s; %s compiles that kernel through Triton", message, self.op
            )

    def ready(self, key: tuple[Any, ...]) -> bool:
        """Whether a kernel is saved for ``key`` and loaded: :meth:`launch` will
        launch it (looked up once a key; a pending save is written here)."""
        entry = self._loaded.get(key, False)
        if entry is False:
            where = self._where(key)
            if where is None:  # no root noted yet: asked again on the next call
                return False
            if key in self._pending:
                self._write(key, where, self._pending.pop(key))
                entry = self._loaded[key] = None
            else:
                entry = self._loaded[key] = self._find(key, where)
        return entry is not None

    def launch(
        self,
        key: tuple[Any, ...],
        grid: tuple[int, int, int],
        everything: tuple[Any, ...],
    ) -> bool:
        """Launch the kernel saved for ``key`` on the current stream (False: none
        is, nothing launched); ``everything``: the kernel's arguments in order,
        constexprs included."""
        entry = self._loaded.get(key)  # one lookup once loaded (every launch)
        if entry is None:
            if not self.ready(key):
                return False
            entry = self._loaded[key]
            assert entry is not None  # ready() said so
        run, function, record = entry
        args = tuple(None if i < 0 else everything[i] for i in record.launched)
        run(
            function,
            grid[0],
            grid[1],
            grid[2],
            record.num_warps,
            record.shared,
            record.arg_types,
            args,
            torch._C._cuda_getCurrentRawStream(key[0]),  # type: ignore[attr-defined]
        )
        return True

    # NOTE: [no cubin loads inside a CUDA graph capture]
    # Loading a module (cuModuleLoad, then cuFuncSetAttribute) while a stream
    # captures in the default global mode is refused by the driver ("operation
    # not permitted when stream is capturing") and invalidates the capture;
    # Triton's JIT fails the same way on a kernel it has not loaded yet (its
    # load_binary), so falling back to it is no escape.  A key is first seen
    # inside a capture in FULL mode with cudagraph_num_of_warmups=0, or in an
    # engine's own graphs, at a size whose specialization no eager call had.
    # So a device's first call outside a capture loads every kernel saved for
    # the op and that GPU (a few, each a small cubin), and a key first seen
    # inside a capture takes its kernel from those.  One saved but not loaded
    # then (the first call was itself captured) raises, naming the op and the
    # specialization, before any driver call; a key with nothing saved goes to
    # Triton as it would without prebuilt kernels.  A capture on another thread
    # is not seen here: a load it refuses is a RuntimeError, and Triton serves.

    def _find(self, key: tuple[Any, ...], where: Where) -> Loaded | None:
        folder, _, name, fields = where
        device = key[0]
        preloaded = self._preloaded.get(device)
        if torch.cuda.is_current_stream_capturing():
            found = preloaded.get(name) if preloaded is not None else None
            if found is None and os.path.exists(
                location.kernel_record_file(folder, name)
            ):
                raise StitchRuntimeError(
                    f"{self.op}: the prebuilt kernel {name} for specialization "
                    f"{fields['specialization']} on cuda:{device} is first needed "
                    "inside a CUDA graph capture, where no kernel can be loaded; "
                    "run one call at this size before capturing (for instance "
                    "cudagraph_num_of_warmups=1)"
                )
            return found
        if preloaded is None:
            preloaded = self._preloaded[device] = self._preload(device, where)
        found = preloaded.get(name)
        return found if found is not None else self._load(key, where)

    def _preload(self, device: int, where: Where) -> dict[str, Loaded]:
        """Every kernel saved for this op and ``device``'s GPU, loaded (NOTE:
        [no cubin loads inside a CUDA graph capture]); one that does not load
        is left to :meth:`_load`, which says why when its key is asked for."""
        folder, root, _, fields = where
        loaded = {}
        for name, record, cubin in find_kernels(folder, root, fields):
            try:
                loaded[name] = self._loaded_kernel(device, record, cubin)
            except RuntimeError:
                continue
        return loaded

    def _load(self, key: tuple[Any, ...], where: Where) -> Loaded | None:
        folder, root, name, fields = where
        try:
            found = find_kernel(folder, root, name, fields)
            if found is None:
                return None
            record, cubin = found
            return self._loaded_kernel(key[0], record, cubin)
        except (StitchError, OSError, RuntimeError) as exc:
            self._tell(name, f"the prebuilt kernel {name} is not used ({exc})")
            return None

    @staticmethod
    def _loaded_kernel(device: int, record: OpKernelRecord, cubin: str) -> Loaded:
        function = load_function(cubin, record.function, record.shared, device)
        return launcher_for(device), function, record

    def save(self, key: tuple[Any, ...], compiled: Any) -> None:
        """Save what Triton compiled for ``key``, once a process (before a cache
        root is noted: once one is, on the next :meth:`launch`)."""
        if self._loaded.get(key) or key in self._saved:
            return
        where = self._where(key)
        if where is None:
            self._pending[key] = compiled
            return
        self._write(key, where, compiled)

    def _write(self, key: tuple[Any, ...], where: Where, compiled: Any) -> None:
        self._saved.add(key)
        folder, root, name, fields = where
        try:
            facts, cubin = launch_facts(compiled)
        except (ValueError, AttributeError, KeyError) as exc:
            log.info("stitch: %s's kernel %s is not saved (%s)", self.op, name, exc)
            return
        try:
            save_kernel(folder, root, name, fields, facts, cubin)
        except OSError as exc:
            self._tell(f"write {folder}", f"cannot save kernels in {folder} ({exc})")


# NOTE: [a prebuilt kernel launches on its tensors' device]
# The static launcher launches in the CUDA context current on the thread, and a
# function loaded for cuda:1 (NOTE: [loading a cubin through torch's static
# launcher] in compat/static_launcher.py) launches only there: a model split
# over GPUs in one process (transformers' device_map) calls the op for cuda:1
# while cuda:0 is current.  With one GPU visible no launch can go astray and a
# kernel launches through the launcher itself; with several, through a check
# of the current device first (switching only when it differs).


def launcher_for(device: int) -> Callable[..., Any]:
    """What launches a kernel loaded for ``device`` (NOTE: [a prebuilt kernel
    launches on its tensors' device])."""
    launch = launcher()._launch_kernel
    if torch.cuda.device_count() <= 1:
        return launch
    current = torch._C._cuda_getDevice  # type: ignore[attr-defined]

    def on_device(*args: Any) -> None:
        if current() == device:
            launch(*args)
            return
        with torch.cuda.device(device):
            launch(*args)

    return on_device


__all__ = [
    "PrebuiltKernels",
    "enabled",
    "launcher_for",
    "specialization_key",
    "specialization_text",
]
