"""The record kinds of a saved forward (``runtime/saved/``), declared for the codec.

They live in ``store/`` so that ``stitch inspect`` (``verify.py``) checks
them without importing the pipeline; the pipeline reads and writes them
through :func:`read_aot_record` and :func:`write_aot_record`.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from . import codec
from .codec import Record
from .index import Count, Sha256

# 2: the codec's envelope (kind, version).
AOT_RECORD_FORMAT = 2

Sha256OrNone = Sha256 | None


class SavedFunction(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the forward's own code is rebuilt: torch's loader or the light path."""

    backend_id: str
    import_sources: dict[str, str]
    builtins: tuple[str, ...]
    argdefs: tuple[Any, ...] | None
    kwdefaults: dict[str, Any] | None
    light: bool
    bytecode_sha256: Sha256OrNone = None

    def __post_init__(self) -> None:
        if self.light and self.bytecode_sha256 is None:
            raise ValueError("bytecode_sha256 is missing (the light path needs it)")


class AOTRecord(Record, frozen=True):
    """``function.py``: what a saved forward is valid for and how it loads."""

    KIND = "aot"
    VERSION = AOT_RECORD_FORMAT

    model: str
    factors: dict[str, Any]
    # (module, source file, sha256 or None) of each file Dynamo traced.
    code: tuple[tuple[str, str, Sha256OrNone], ...]
    function: SavedFunction
    # The saved reference to the stitched function's cache entry (pipeline/saved_function.py).
    stitched: dict[str, Any]
    torch_function_sha256: Sha256OrNone

    def __post_init__(self) -> None:
        for name in ("entry", "cache_root"):
            if not isinstance(self.stitched.get(name), str):
                raise ValueError(f"stitched.{name} is missing or not a str")


def as_data(value: Any) -> Any:
    """A record as the plain dicts its readers index (tuples stay tuples)."""
    if isinstance(value, msgspec.Struct):
        return {f: as_data(getattr(value, f)) for f in value.__struct_fields__}
    if isinstance(value, dict):
        return {k: as_data(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(as_data(v) for v in value)
    return value


def aot_record(data: dict[str, Any], path: str) -> AOTRecord:
    """``data`` (what the saved forward's writer built) as a checked record."""
    body = {k: v for k, v in data.items() if k != "format"}
    return codec.convert(AOTRecord, body, path)


# -- the saved reference to a cache entry (pipeline/saved_function.py) ------------------

# 2: the codec's envelope (kind, version); the graph plan is a typed field.
REFERENCE_FORMAT = 2


class SavedDynamicInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A padded input of a CUDA graph plan (cudagraph/padding_plan.py's DynamicInput)."""

    index: Count
    name: str
    rest: tuple[Count, ...]
    dtype: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_]+$")]
    device: str
    pad: float | int


class SavedGraphPlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a saved function rebuilds its CUDA graphs from (cudagraph/graph_plan.py)."""

    size_index: Count
    size_indices: tuple[Count, ...]
    dynamic: tuple[SavedDynamicInput, ...]
    slice_outputs: tuple[bool, ...]
    flat_output: bool
    last: Annotated[int, msgspec.Meta(ge=-1)]

    def __post_init__(self) -> None:
        if self.size_index not in self.size_indices:
            raise ValueError("size_index is not a size argument")


class SavedGraphs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The CUDA graphs a saved function runs: their settings and plan."""

    config: dict[str, Any]
    plan: SavedGraphPlan


# A constant of the stitching source: {"dtype": name}, {"device": text} or
# {"literal": repr}.
SavedConst = dict[
    Annotated[str, msgspec.Meta(pattern=r"^(dtype|device|literal)$")], str
]


class Reference(Record, frozen=True):
    """What a saved Stitch function holds: a reference to its cache entry."""

    KIND = "reference"
    VERSION = REFERENCE_FORMAT

    cache_root: str
    # The entry's folder under the root, "/"-separated, never absolute or "..".
    entry: Annotated[str, msgspec.Meta(pattern=r"^(?!/)(?!.*(^|/)\.\.(/|$)).+$")]
    backend: str
    targets: dict[str, Any]
    consts: tuple[SavedConst, ...]
    # Modules whose import registers ops the compiled pieces call (the passes').
    imports: tuple[str, ...]
    cudagraphs: SavedGraphs | None
    # The sha256 of the entry's index when the function was saved.
    index_sha256: Sha256OrNone = None

    def __post_init__(self) -> None:
        for i, const in enumerate(self.consts):
            if len(const) != 1:
                raise ValueError(f"consts[{i}] has {len(const)} kinds, expected one")


# -- a prebuilt piece (pipeline/prebuilt/load.py) ---------------------------------------

# 3: a sealed codec record (kind, version, check) instead of a sha256 header.
# 4: Triton kernels (CUDA pieces) and the GPU they were built for.
PREBUILT_FORMAT = 4


class TritonKernel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One Triton kernel of a CUDA piece, as the autotuner settled it: its cubin
    and what launching it takes (NOTE: [prebuilt Triton kernels])."""

    # The kernel function's name inside the cubin.
    function: str
    cubin_sha256: Sha256
    num_warps: Count
    shared: Count
    # One character per launched argument (pointer "O", i32 "i", ...), the
    # scratch arguments included.
    arg_types: str
    # The launcher: its parameters (the wrapper's ``.run`` arguments), the grid
    # (statements, then the three dimensions) and the arguments launched.
    parameters: tuple[str, ...]
    grid_prefix: tuple[str, ...]
    grid: tuple[str, str, str]
    launched: tuple[str, ...]
    device: Count


class PrebuiltRecord(Record, frozen=True):
    """``prebuilt/<key>.prebuilt``: an Inductor piece's wrapper code and the
    kernels it calls, to run without Inductor (NOTE: [prebuilt pieces])."""

    KIND = "prebuilt"
    VERSION = PREBUILT_FORMAT
    SEALED = True

    artifact_sha256: Sha256
    # What the kernels were built for: CPU flags, Python and torch.
    machine: str
    torch_version: str
    increment_version: tuple[Any, ...]
    # Name in the wrapper -> dotted path of the function it stands for.
    extern_kernels: dict[str, str]
    # Kernel key (argument types and source) -> sha256 of its built library.
    kernels: dict[str, Sha256]
    wrapper: str
    # Kernel key (name and source) -> the Triton kernel it launches.
    triton: dict[str, TritonKernel] = {}
    # The GPU the Triton kernels were built for ("" for a CPU piece).
    gpu: str = ""
    # Inputs AOTAutograd realigns when they are not 16-byte aligned.
    align_inputs: tuple[Count, ...] = ()


# -- a saved forward's input signatures (saved/input_mismatch.py) ---------------

# 2: the codec's envelope (kind, version).
SIGNATURES_FORMAT = 2


class SavedSignature(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One signature: the folder of its saved forward ("" for the first) and
    its inputs (codegen's ``InputSignature.to_literal``, checked by its reader)."""

    folder: str
    inputs: tuple[dict[str, Any], ...]


class SignaturesRecord(Record, frozen=True):
    """``signatures.py``: the signatures a saved forward's input check was
    generated from, and the sha256 of that check (``input_check.py``)."""

    KIND = "signatures"
    VERSION = SIGNATURES_FORMAT

    forward: str
    params: tuple[str, ...]
    dims: tuple[tuple[Count, ...], ...]
    signatures: tuple[SavedSignature, ...]
    # Input shapes whose compile failed -> the error the check raises for them.
    rejected: dict[str, str]
    check_sha256: Sha256
    keywords: tuple[str, ...] = ()


class OpKernelRecord(Record, frozen=True):
    """``kernels/<op>/<name>.kernel``: one Triton kernel of one of Stitch's own ops,
    compiled for one specialization, and what launching its cubin
    (``<cubin_sha256>.cubin`` beside it) takes (NOTE: [an op's Triton kernel
    without Triton] in stitch.runtime.kernels.static_launch)."""

    KIND = "op-kernel"
    VERSION = 1
    SEALED = True

    op: str
    # What it was compiled for: the specialization (constexprs, dtypes, what
    # Triton specializes pointers and integers on), the GPU, CUDA and Triton,
    # and the kernel module's source.
    specialization: str
    gpu: str
    source_sha256: Sha256
    # The kernel function's name inside the cubin.
    function: str
    cubin_sha256: Sha256
    num_warps: Count
    shared: Count
    # One character per launched argument (pointer "O", i32 "i", ...), and the
    # index of each in the kernel's arguments (constexprs included); -1 for a
    # scratch pointer, launched as null.
    arg_types: str
    launched: tuple[Annotated[int, msgspec.Meta(ge=-1)], ...]
