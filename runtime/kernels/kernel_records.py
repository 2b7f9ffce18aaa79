"""A prebuilt kernel on disk (NOTE: [an op's Triton kernel without Triton] in
static_launch.py): what launching a compiled Triton kernel through torch's
static launcher takes, and its cubin and record written and found, checked."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from stitch.core.errors import StitchError

from ..store import codec, location
from ..store.digests import content_hash, file_hash_or_none, key_hash
from ..store.files import atomic_write, make_private_dirs
from ..store.records import OpKernelRecord
from ..store.trust import check_trusted

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

    ``fields``: what the kernel was saved for (op, specialization, gpu,
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


def kernel_name(fields: dict[str, Any]) -> str:
    """The name a kernel saved for ``fields`` (op, specialization, gpu,
    source_sha256, in that order) is saved and found under."""
    return key_hash(*fields.values())


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
                f"{path}: was saved for {field} {getattr(record, field)!r}, "
                f"this process has {want!r}"
            )
    cubin = location.kernel_cubin_file(folder, record.cubin_sha256)
    check_trusted(cubin, root)
    got = file_hash_or_none(cubin)
    if got != record.cubin_sha256:
        why = "is missing" if got is None else f"has sha256 {got[:12]}..."
        raise StitchError(f"{path}: its cubin {cubin} {why}, not the one saved")
    return record, cubin


def find_kernels(
    folder: str, root: str, fields: dict[str, Any]
) -> Iterator[tuple[str, OpKernelRecord, str]]:
    """Each kernel in ``folder`` saved for ``fields`` but any specialization:
    its name, record and cubin's path, checked as :func:`find_kernel` checks.
    A record that fails a check, or is not named by its own fields, is left
    out here: :func:`find_kernel` names what is wrong when its specialization
    is asked for."""
    try:
        files = sorted(os.listdir(folder))
    except OSError:  # nothing saved yet
        return
    for file in files:
        name = os.path.splitext(file)[0]
        path = location.kernel_record_file(folder, name)
        if path != os.path.join(folder, file):
            continue  # a cubin
        try:
            check_trusted(path, root)
            specialization = codec.read(OpKernelRecord, path).specialization
            wanted = {**fields, "specialization": specialization}
            if kernel_name(wanted) != name:
                continue
            found = find_kernel(folder, root, name, wanted)
        except (StitchError, OSError):
            continue
        if found is not None:
            yield name, *found


__all__ = ["find_kernel", "find_kernels", "kernel_name", "launch_facts", "save_kernel"]
