"""Stitch's own Triton kernels, kept as cubins by the process that compiled them
and launched from there by later processes, without importing Triton.

NOTE: [an op's Triton kernel without Triton]
A warm process loads its pieces' Triton kernels prebuilt (NOTE: [prebuilt
Triton kernels] in pipeline/prebuilt_triton.py), but ``stitch::attention`` and
``stitch::paged_attention`` are splitting ops, not pieces: their kernels went
through Triton's JIT on the first launch, which cost about 0.92 s of the 2.03 s
warm restart on the H100 (``import triton`` 0.28 s, Triton hashing its own
sources 0.44 s, the JIT's lookup 0.15-0.2 s; docs/performance.md).  So the
process that compiles a kernel keeps it: for each specialization
(:func:`specialization_key`: constexprs, dtypes, pointers' 16-byte alignment,
integers equal to 1, divisible by 16 or beyond int32, which are what Triton
specializes on), the cubin and what launching it takes (function
name, warps, shared memory, one type per launched argument, which arguments
are launched) go to ``<root>/kernels/<op>/`` (NOTE: [the root Stitch's ops
keep their kernels under] in store/location.py), named by a key hash of the op,
the specialization, the GPU (model, architecture, CUDA, Triton) and the kernel
module's source.  A later process with the same key finds the record, checks
it (trusted folder, sealed record, the cubin's sha256, every field it was kept
for) and launches the cubin through ``torch._C._StaticCudaLauncher``, the
launcher the prebuilt pieces use.  Any check that fails is one warning naming
the file, and that specialization goes through Triton as before.  Triton's
launch hooks (profilers such as proton) are not called for a kept kernel's
launch, as for Inductor's statically launched kernels.

Each file is written through a rename, the cubin (named by its sha256) before
its record, so a reader sees a whole record naming a cubin that is there, even
when processes keep the same kernel at once.  A kernel compiled before the
process opened any entry (an eager run first) is kept on the op's first call
after one is opened.  The files are not part of any entry: ``stitch cache``
leaves ``kernels/`` alone, and the fleet store does not carry them (a replica
compiles its own on its first launch, about a second).  ``STITCH_KEEP_KERNELS=0``
turns keeping and launching kept kernels off.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch

from stitch.core.errors import StitchError

from ..compat.versions import gpu_fingerprint
from ..store import codec, location
from ..store.files import atomic_write, make_private_dirs
from ..store.hashing import content_hash, file_hash_or_none, key_hash
from ..store.records import OpKernelRecord
from ..store.trust import check_trusted

log = logging.getLogger("stitch")

# Where one specialization's kernel is kept: folder, cache root, name, and the
# fields its record must hold.
Where = tuple[str, str, str, dict[str, Any]]

# Triton's scalar types -> _StaticCudaLauncher's argument characters (pointers
# are "O"), as torch's StaticallyLaunchedCudaKernel maps them.
ARGUMENT_TYPES = {
    "i1": "i",
    "i8": "b",
    "i16": "h",
    "i32": "i",
    "i64": "l",
    "u1": "I",
    "u8": "B",
    "u16": "H",
    "u32": "I",
    "u64": "K",
    "fp16": "f",
    "bf16": "f",
    "fp32": "f",
    "f32": "f",
    "fp64": "d",
}
# Scratch buffers Triton 3.x appends to a kernel's parameters (launched as null).
SCRATCH_FIELDS = ("global_scratch_size", "profile_scratch_size")
# Launch modes the static launcher does not set up.
LAUNCH_FLAGS = ("launch_cooperative_grid", "launch_pdl")


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
def keeping() -> bool:
    """Whether kernels are kept, and kept ones launched: not with
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


def launch_facts(compiled: Any) -> tuple[dict[str, Any], bytes]:
    """What launching a Triton ``CompiledKernel`` statically takes, and its cubin;
    raises ``ValueError`` naming why it cannot be launched that way."""
    metadata = compiled.metadata
    cubin = getattr(compiled, "asm", {}).get("cubin")
    if not cubin:
        raise ValueError("it has no cubin (not compiled for CUDA)")
    if getattr(metadata, "num_ctas", 1) != 1:
        raise ValueError(f"it runs {metadata.num_ctas} CTAs a program")
    for flag in LAUNCH_FLAGS:
        if getattr(metadata, flag, False):
            raise ValueError(f"it is launched with {flag}")
    if getattr(metadata, "tensordesc_meta", None):
        raise ValueError("it takes TMA descriptors")
    scratch = [f for f in SCRATCH_FIELDS if hasattr(metadata, f)]
    for field in scratch:
        if getattr(metadata, field) > 0:
            raise ValueError(
                f"it needs scratch memory ({field}={getattr(metadata, field)})"
            )
    source = compiled.src
    names = list(source.fn.arg_names)

    def index(key: Any) -> int:
        if isinstance(key, str):
            return names.index(key)
        return key[0] if isinstance(key, tuple) else int(key)

    signature = {index(k): t for k, t in source.signature.items()}
    constants = {index(k) for k in getattr(source, "constants", {})}
    types, launched = [], []
    for i in sorted(signature):
        kind = signature[i]
        if kind == "constexpr" or i in constants:
            continue
        if kind.startswith("*"):
            types.append("O")
        elif kind in ARGUMENT_TYPES:
            types.append(ARGUMENT_TYPES[kind])
        else:
            raise ValueError(
                f"argument {names[i]} has type {kind}, not launched statically"
            )
        launched.append(i)
    types += ["O"] * len(scratch)
    launched += [-1] * len(scratch)
    facts = {
        "function": str(metadata.name),
        "num_warps": int(metadata.num_warps),
        "shared": int(metadata.shared),
        "arg_types": "".join(types),
        "launched": tuple(launched),
    }
    return facts, bytes(cubin)


def save_kernel(
    folder: str,
    root: str,
    name: str,
    fields: dict[str, Any],
    facts: dict[str, Any],
    cubin: bytes,
) -> str:
    """Write the cubin, then the record ``<folder>/<name>.kernel``; its path.

    ``fields``: what the kernel was kept for (op, specialization, gpu,
    source_sha256).  Raises ``OSError``.
    """
    make_private_dirs(folder, root)
    sha = content_hash(cubin)
    cubin_path = location.kernel_cubin_file(folder, sha)
    if file_hash_or_none(cubin_path) != sha:
        atomic_write(cubin_path, cubin)
    record = OpKernelRecord(**fields, **facts, cubin_sha256=sha)
    path = location.kernel_record_file(folder, name)
    atomic_write(path, codec.encode(record))
    return path


def find_kernel(
    folder: str, root: str, name: str, fields: dict[str, Any]
) -> tuple[OpKernelRecord, str] | None:
    """The record ``<folder>/<name>.kernel`` and its cubin's path, checked; None
    when there is none.  Raises ``StitchError`` naming the file and what is
    wrong when one is there but cannot be used."""
    path = location.kernel_record_file(folder, name)
    if not os.path.exists(path):
        return None
    check_trusted(path, root)
    record = codec.read(OpKernelRecord, path)
    for field, want in fields.items():
        if getattr(record, field) != want:
            raise StitchError(
                f"{path}: was kept for {field} {getattr(record, field)!r}, "
                f"this process has {want!r}"
            )
    cubin = location.kernel_cubin_file(folder, record.cubin_sha256)
    check_trusted(cubin, root)
    got = file_hash_or_none(cubin)
    if got != record.cubin_sha256:
        why = "is missing" if got is None else f"has sha256 {got[:12]}..."
        raise StitchError(f"{path}: its cubin {cubin} {why}, not the one kept")
    return record, cubin


@functools.cache
def gpu_of(device: int) -> str:
    """The GPU a cubin for ``device`` is built for (asked once a device)."""
    return gpu_fingerprint(device)


class KeptKernels:
    """One op's kept kernels: :meth:`launch` one (False: none kept for that key),
    :meth:`keep` one Triton compiled (NOTE: [an op's Triton kernel without Triton])."""

    def __init__(self, op: str, source_file: str) -> None:
        self.op = op
        self.source_file = source_file
        # key -> (function, record), or None: looked up, none usable (Triton's
        # JIT serves that key in this process).
        self._loaded: dict[tuple[Any, ...], tuple[int, OpKernelRecord] | None] = {}
        # Compiled before this process noted a cache root: kept once it has one.
        self._pending: dict[tuple[Any, ...], Any] = {}
        self._kept: set[tuple[Any, ...]] = set()
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
        name = key_hash(*fields.values())
        return location.kernel_folder(root, self.op), root, name, fields

    def _tell(self, what: str, message: str) -> None:
        if what not in self._told:
            self._told.add(what)
            log.warning(
                "stitch: %s; %s compiles that kernel through Triton", message, self.op
            )

    def ready(self, key: tuple[Any, ...]) -> bool:
        """Whether a kernel is kept for ``key`` and loaded: :meth:`launch` will
        launch it (looked up once a key; a pending keep is written here)."""
        entry = self._loaded.get(key, False)
        if entry is False:
            where = self._where(key)
            if where is None:  # no root noted yet: asked again on the next call
                return False
            if key in self._pending:
                self._write(key, where, self._pending.pop(key))
                entry = self._loaded[key] = None
            else:
                entry = self._loaded[key] = self._load(key, where)
        return entry is not None

    def launch(
        self,
        key: tuple[Any, ...],
        grid: tuple[int, int, int],
        everything: tuple[Any, ...],
    ) -> bool:
        """Launch the kernel kept for ``key`` on the current stream (False: none
        is, nothing launched); ``everything``: the kernel's arguments in order,
        constexprs included."""
        if not self.ready(key):
            return False
        entry = self._loaded[key]
        assert entry is not None  # ready() said so
        function, record = entry
        args = tuple(None if i < 0 else everything[i] for i in record.launched)
        _launcher()._launch_kernel(
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

    def _load(
        self, key: tuple[Any, ...], where: Where
    ) -> tuple[int, OpKernelRecord] | None:
        folder, root, name, fields = where
        try:
            found = find_kernel(folder, root, name, fields)
            if found is None:
                return None
            record, cubin = found
            function, _, _ = _launcher()._load_kernel(
                cubin, record.function, record.shared, key[0]
            )
        except (StitchError, OSError, RuntimeError) as exc:
            self._tell(name, f"the kept kernel {name} is not used ({exc})")
            return None
        return function, record

    def keep(self, key: tuple[Any, ...], compiled: Any) -> None:
        """Keep what Triton compiled for ``key``, once a process (before a cache
        root is noted: once one is, on the next :meth:`launch`)."""
        if self._loaded.get(key) or key in self._kept:
            return
        where = self._where(key)
        if where is None:
            self._pending[key] = compiled
            return
        self._write(key, where, compiled)

    def _write(self, key: tuple[Any, ...], where: Where, compiled: Any) -> None:
        self._kept.add(key)
        folder, root, name, fields = where
        try:
            facts, cubin = launch_facts(compiled)
        except (ValueError, AttributeError, KeyError) as exc:
            log.info("stitch: %s's kernel %s is not kept (%s)", self.op, name, exc)
            return
        try:
            save_kernel(folder, root, name, fields, facts, cubin)
        except OSError as exc:
            self._tell(f"write {folder}", f"cannot keep kernels in {folder} ({exc})")


def _launcher() -> Any:
    return torch._C._StaticCudaLauncher  # type: ignore[attr-defined]


__all__ = [
    "KeptKernels",
    "find_kernel",
    "keeping",
    "launch_facts",
    "save_kernel",
    "specialization_key",
    "specialization_text",
]
