"""Triton kernels of a prebuilt CUDA piece, and the inputs it realigns.

NOTE: [prebuilt Triton kernels]
A CUDA piece's wrapper also defines Triton kernels (``async_compile.triton``
with each kernel's source).  Importing any of ``torch._inductor.runtime`` loads
all of Inductor, Dynamo and sympy (5 s on the H100 machine), and Triton's own
launcher needs Triton (0.4 s).  What launching a settled kernel takes is its
cubin, its grid expression and its argument types: the record keeps those per
kernel, the cubin as an extra file, and loading launches it through
``torch._C._StaticCudaLauncher`` (the launcher Inductor uses itself), so a warm
process imports neither.  The kernels are settled at save time: running the
wrapper's compile-time autotuning block leaves every kernel with one
configuration (``compat.inductor.tuned_triton_kernels``).  A kernel Inductor
would not launch statically (launch hooks, scratch memory, TMA descriptors,
several CTAs) leaves its piece without a record.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch

from stitch.core.errors import StitchCacheError

from ...compat.static_launcher import launcher, load_function
from ...loader import register_source
from ...store.artifacts import PREBUILT_DIR
from ...store.digests import content_hash
from ...store.extras import Extras
from ...store.records import TritonKernel
from ..piecewise import Runnable

KERNELS_DIR = "kernels"


def cubin_name(sha256: str) -> str:
    """A Triton kernel's cubin as an extra file (``prebuilt/kernels/<sha256>.cubin``)."""
    return f"{PREBUILT_DIR}/{KERNELS_DIR}/{sha256}.cubin"


def triton_key(name: str, source: str) -> str:
    """The content key of one Triton kernel: its name and generated module source."""
    return content_hash((repr(["triton", name]) + "\0" + source).encode())


def cuda_available() -> bool:
    return torch.cuda.is_available()


# (cubin sha256, function, device) -> the loaded CUfunction: the pieces of every
# capture size share their kernels, each loaded once.
_FUNCTIONS: dict[tuple[str, str, int], int] = {}


def load_triton(extras: Extras, name: str, entry: TritonKernel) -> Any:
    """A Triton kernel of a prebuilt CUDA wrapper: ``.run(*args, stream=)`` launches
    its cubin, verified as an extra file of the artifact before it is loaded."""
    key = (entry.cubin_sha256, entry.function, entry.device)
    function = _FUNCTIONS.get(key)
    if function is None:
        extra = cubin_name(entry.cubin_sha256)
        cubin = extras.verified_path(extra)
        if extras.record.files[extra].sha256 != entry.cubin_sha256:
            raise StitchCacheError(
                f"{extras.list_path}: lists {extra} with another sha256"
            )
        try:
            function = load_function(cubin, entry.function, entry.shared, entry.device)
        except RuntimeError as exc:
            raise StitchCacheError(f"kernel {cubin} does not load ({exc})") from None
        _FUNCTIONS[key] = function
    launch = launcher()._launch_kernel
    return types.SimpleNamespace(
        name=name, run=triton_launcher(name, entry, function, launch)
    )


def triton_launcher(
    name: str, entry: TritonKernel, function: int, launch: Callable[..., Any]
) -> Runnable:
    """``launcher(*parameters, stream)``: the grid from the sizes, then one
    ``launch(function, grid_x, grid_y, grid_z, warps, shared, types, args, stream)``."""
    words = [*entry.parameters, *(a for a in entry.launched if a != "None")]
    bad = [w for w in words if not w.isidentifier() or w.startswith("_")]
    if bad:
        raise StitchCacheError(f"Triton kernel {name}: {bad[0]!r} is no argument name")
    launched = "".join(f"{a}, " for a in entry.launched)
    lines = [
        f"def launcher({''.join(p + ', ' for p in entry.parameters)}stream):",
        *(f"    {line}" for line in entry.grid_prefix),
        *(f"    grid_{i} = {expr}" for i, expr in enumerate(entry.grid)),
        "    _launch(_function, grid_0, grid_1, grid_2, _warps, _shared, _types,"
        f" ({launched}), stream)",
    ]
    scope: dict[str, Any] = {
        "_launch": launch,
        "_function": function,
        "_warps": entry.num_warps,
        "_shared": entry.shared,
        "_types": entry.arg_types,
    }
    source = "\n".join(lines) + "\n"
    filename = f"<stitch-triton-{name}>"
    register_source(source, filename)
    try:
        exec(compile(source, filename, "exec"), scope)  # noqa: S102
    except SyntaxError as exc:
        raise StitchCacheError(f"Triton kernel {name}: bad launcher ({exc})") from None
    return scope["launcher"]


# Inductor assumes the inputs it lists in ``inputs_to_check`` start on this boundary.
ALIGNMENT = 16


def aligned_call(
    call: Callable[[list[Any]], Any], indices: tuple[int, ...]
) -> Callable[[list[Any]], Any]:
    """``call`` with each listed input that is not 16-byte aligned copied first,
    strides kept, as AOTAutograd's wrapper does for such a piece (none of them is
    mutated: a piece whose mutated input is listed gets no record)."""

    def run(args: list[Any]) -> Any:
        for i in indices:
            arg = args[i]
            if isinstance(arg, torch.Tensor) and arg.data_ptr() % ALIGNMENT:
                args[i] = clone_preserve_strides(arg)
        return call(args)

    return run


def clone_preserve_strides(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` in fresh (aligned) memory, with the same sizes and strides."""
    if 0 in x.shape:
        return x.clone()
    extent = 1 + sum(
        (size - 1) * stride for size, stride in zip(x.shape, x.stride(), strict=True)
    )
    flat = torch.as_strided(x, (extent,), (1,)).clone()
    return torch.as_strided(flat, x.shape, x.stride())
