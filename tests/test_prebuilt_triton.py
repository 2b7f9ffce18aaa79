"""Prebuilt CUDA pieces, the parts that run without a GPU (NOTE: [prebuilt Triton kernels]).

A CUDA piece's record launches each Triton kernel from its cubin through
``torch._C._StaticCudaLauncher``; tests/test_cuda.py checks that on a GPU (a
warm process loads every piece so and imports no Inductor, Dynamo, sympy or
Triton).  Here: the launcher built from a record computes the grid and passes
the arguments the record names, a record of Triton kernels round-trips through
the codec, the wrapper's Triton imports are answered without importing Triton
or Inductor, and misaligned inputs are copied as AOTAutograd's wrapper does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import msgspec
import pytest
import torch

from stitch.core.errors import StitchCacheError
from stitch.runtime.pipeline.prebuilt.load import parse_record, render_record
from stitch.runtime.pipeline.prebuilt.triton_kernels import (
    aligned_call,
    triton_key,
    triton_launcher,
)
from stitch.runtime.store.records import TritonKernel

SHA = "ab" * 32


def _kernel(**fields: Any) -> TritonKernel:
    base: dict[str, Any] = {
        "function": "triton_poi_fused_add_0",
        "cubin_sha256": SHA,
        "num_warps": 4,
        "shared": 128,
        "arg_types": "OOiO",
        "parameters": ("in_ptr0", "out_ptr0", "xnumel"),
        "grid_prefix": (),
        "grid": ("-((xnumel) // -(1024))", "1", "1"),
        "launched": ("in_ptr0", "out_ptr0", "xnumel", "None"),
        "device": 0,
    }
    base.update(fields)
    return TritonKernel(**base)


def test_launcher_computes_the_grid_and_launches_the_named_arguments() -> None:
    calls: list[tuple[Any, ...]] = []
    run = triton_launcher("k", _kernel(), 1234, lambda *a: calls.append(a))
    a, b = object(), object()
    run(a, b, 5000, stream=77)
    run(a, b, 1024, stream=0)
    assert calls == [
        (1234, 5, 1, 1, 4, 128, "OOiO", (a, b, 5000, None), 77),
        (1234, 1, 1, 1, 4, 128, "OOiO", (a, b, 1024, None), 0),
    ]


def test_launcher_runs_the_grid_prefix() -> None:
    calls: list[tuple[Any, ...]] = []
    kernel = _kernel(
        grid_prefix=("y_grid_raw_ = -((ynumel) // -(16))",),
        grid=("-((xnumel) // -(64))", "min(y_grid_raw_, 65535)", "1"),
        parameters=("in_ptr0", "out_ptr0", "ynumel", "xnumel"),
        launched=("in_ptr0", "out_ptr0", "ynumel", "xnumel"),
        arg_types="OOii",
    )
    triton_launcher("k", kernel, 1, lambda *a: calls.append(a))(1, 2, 40, 128, stream=3)
    assert calls[0][1:4] == (2, 3, 1)


@pytest.mark.parametrize(
    "fields",
    [
        {"parameters": ("in_ptr0", "os.system('x')", "xnumel")},
        {"launched": ("in_ptr0", "_function", "xnumel", "None")},
    ],
)
def test_launcher_refuses_names_that_are_not_arguments(fields: dict[str, Any]) -> None:
    with pytest.raises(StitchCacheError, match="is no argument name"):
        triton_launcher("k", _kernel(**fields), 1, print)


def test_a_record_of_triton_kernels_round_trips() -> None:
    key = triton_key("triton_poi_fused_add_0", "source")
    data = {
        "artifact_sha256": SHA,
        "machine": "m",
        "torch_version": "2.11.0",
        "increment_version": [],
        "extern_kernels": {"mm": "torch.ops.aten.mm.out"},
        "kernels": {},
        "wrapper": "def call(args):\n    return ()\n",
        "triton": {key: msgspec.to_builtins(_kernel())},
        "gpu": "NVIDIA H100 80GB HBM3 sm_90 cuda 13.0 triton 3.6.0",
        "align_inputs": [0, 3],
    }
    record = parse_record(render_record(data).encode(), "p")
    assert record.triton[key] == _kernel()
    assert record.align_inputs == (0, 3) and record.gpu.startswith("NVIDIA")
    data["triton"][key]["num_warps"] = -1
    with pytest.raises(StitchCacheError, match="num_warps"):
        parse_record(render_record(data).encode(), "p")


WRAPPER = '''
import torch
import triton
import triton.language as tl
from torch._inductor.runtime.triton_heuristics import start_graph, end_graph
from torch._inductor.async_compile import AsyncCompile
from torch._inductor.select_algorithm import extern_kernels
async_compile = AsyncCompile()
triton_poi_fused_0 = async_compile.triton('triton_poi_fused_0', """
import triton
@triton.jit
def triton_poi_fused_0(in_ptr0, xnumel, XBLOCK: tl.constexpr):
    pass
""", device_str='cuda')
async_compile.wait(globals())
del async_compile

def call(args):
    return (extern_kernels.mm(args[0], args[1]),)
'''

PROBE = """
import json, sys
import torch
from stitch.runtime.pipeline.prebuilt.inductor_stand_ins import exec_wrapper
asked = []
def triton(name, source, device_str="cuda"):
    asked.append([name, device_str, "def triton_poi_fused_0" in source])
    return "kernel"
ns = exec_wrapper(sys.argv[1], "<w>", None, {"mm": torch.mm}, triton)
a = torch.eye(2)
print(json.dumps({
    "asked": asked,
    "kernel": ns["triton_poi_fused_0"],
    "mm": ns["call"]([a, a])[0].tolist(),
    "imported": sorted(m for m in ("triton", "torch._inductor", "torch._dynamo", "sympy")
                       if m in sys.modules),
}))
"""


def test_a_cuda_wrapper_runs_its_top_level_without_triton_or_inductor() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, WRAPPER],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["asked"] == [["triton_poi_fused_0", "cuda", True]]
    assert report["kernel"] == "kernel"
    assert report["mm"] == [[1.0, 0.0], [0.0, 1.0]]
    assert report["imported"] == []


def test_misaligned_inputs_are_copied_with_their_strides() -> None:
    seen: list[torch.Tensor] = []

    def call(args: list[Any]) -> Any:
        seen.extend(args)
        return ()

    base = torch.arange(40, dtype=torch.float32)
    misaligned = base[1:33].view(4, 8)[:, ::2]  # 4 bytes past an aligned start
    aligned = torch.ones(3)
    assert misaligned.data_ptr() % 16 and aligned.data_ptr() % 16 == 0
    aligned_call(call, (0, 1))([misaligned, aligned, 5])
    copy, same, scalar = seen
    assert copy.data_ptr() % 16 == 0 and copy.data_ptr() != misaligned.data_ptr()
    assert copy.stride() == misaligned.stride() and torch.equal(copy, misaligned)
    assert same is aligned and scalar == 5
