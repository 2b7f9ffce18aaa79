"""Where a prebuilt kernel (NOTE: [an op's Triton kernel without Triton] in
runtime/kernels/static_launch.py) is loaded and launched: inside CUDA graph
captures, on the right device, with more than 48 KB of shared memory.

On CPU, torch's static launcher and the CUDA device state are stand-ins that
record what was current when a cubin was loaded and when it was launched; the
records and cubins are real files.  On a GPU (marked ``cuda``) the paged
kernel in fp32 at head dim 128, which needs 64 KB of shared memory on an H100,
is saved by one process and launched by the next, eagerly and in a captured
graph.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from stitch.core.errors import StitchRuntimeError
from stitch.runtime.kernels import kernel_records, static_launch
from stitch.runtime.store import codec, location
from stitch.runtime.store.records import OpKernelRecord

# Triton's limit for shared memory without an opt-in (its driver.c, torch's
# static_cuda_launcher.cpp).
STATIC_SHARED = 49152
KEY_A = (0, (2, True, 64), (torch.float32,), (True,), (4,))
KEY_B = (0, (2, True, 64), (torch.float32,), (True,), (6,))  # another class


class Devices:
    """Stand-ins for torch's CUDA device state, and for its static launcher:
    each load and launch is recorded with the device current and whether a
    stream was capturing; a load while capturing fails as the driver's does."""

    def __init__(self, count: int, returns: int = 3) -> None:
        self.count = count
        self.returns = returns
        self.current = 0
        self.capturing = False
        self.loads: list[dict[str, Any]] = []
        self.launches: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def device(self, index: int) -> Iterator[None]:
        before, self.current = self.current, index
        try:
            yield
        finally:
            self.current = before

    def _load_kernel(self, path: str, name: str, shared: int, device: int) -> Any:
        self.loads.append(
            {"current": self.current, "device": device, "shared": shared}
            | {"capturing": self.capturing, "path": path}
        )
        if self.capturing:
            raise RuntimeError("operation not permitted when stream is capturing")
        function = 1000 + 10 * self.current + len(self.loads)
        if self.returns == 4:  # torch 2.13 on: the module comes first
            return (7, function, 32, 0)
        return (function, 32, 0)

    def _launch_kernel(self, function: int, *rest: Any) -> None:
        _, _, _, warps, shared, types, args, stream = rest
        self.launches.append(
            {"current": self.current, "function": function, "shared": shared}
            | {"stream": stream, "capturing": self.capturing, "args": args}
        )

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch._C, "_StaticCudaLauncher", self, raising=False)
        monkeypatch.setattr(torch.cuda, "device", self.device)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(
            torch.cuda, "is_current_stream_capturing", lambda: self.capturing
        )
        monkeypatch.setattr(
            torch._C, "_cuda_getDevice", lambda: self.current, raising=False
        )
        monkeypatch.setattr(
            torch._C,
            "_cuda_getCurrentRawStream",
            lambda device: 500 + device,
            raising=False,
        )


@pytest.fixture
def kernels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[static_launch.PrebuiltKernels]:
    """An op's prebuilt kernels under a noted cache root in ``tmp_path``."""
    source = tmp_path / "kernel.py"
    source.write_text("# the kernel module's source\n")
    monkeypatch.setattr(static_launch, "gpu_of", lambda device: "a test GPU")
    monkeypatch.setattr(location, "_kernel_root", [])
    location.note_cache_root(str(tmp_path / "cache"))
    yield static_launch.PrebuiltKernels("stitch::attention", str(source))


def save(prebuilt: static_launch.PrebuiltKernels, key: Any, shared: int = 0) -> str:
    """A record and a cubin for ``key``, as the op saves what Triton compiled;
    the cubin's path."""
    where = prebuilt._where(key)
    assert where is not None
    folder, root, name, fields = where
    facts = {
        "function": "attention_kernel",
        "num_warps": 4,
        "shared": shared,
        "arg_types": "Oi",
        "launched": (0, 2),
    }
    cubin = f"a cubin for {key!r}".encode()
    kernel_records.save_kernel(folder, root, name, fields, facts, cubin)
    found = kernel_records.find_kernel(folder, root, name, fields)
    assert found is not None
    return found[1]


@pytest.mark.parametrize("returns", [3, 4], ids=["torch-2.11", "torch-2.13"])
def test_a_kernel_for_cuda1_is_loaded_and_launched_with_cuda1_current(
    kernels: static_launch.PrebuiltKernels,
    monkeypatch: pytest.MonkeyPatch,
    returns: int,
) -> None:
    """A model split over two GPUs calls the op for cuda:1 while cuda:0 is
    current: the cubin loads into cuda:1's context and launches there, with
    the record's shared memory at the load (where the opt-in above 48 KB is
    made) and at the launch."""
    devices = Devices(count=2, returns=returns)
    devices.install(monkeypatch)
    on_1 = (1, *KEY_A[1:])
    cubin = save(kernels, on_1, shared=65536)
    tensor, everything = torch.zeros(1), (None, "unused", 7)
    assert kernels.launch(on_1, (3, 2, 1), (tensor, *everything[1:]))
    assert devices.loads == [
        {"current": 1, "device": 1, "shared": 65536}
        | {"capturing": False, "path": cubin}
    ]
    (launch,) = devices.launches
    assert launch["current"] == 1 and devices.current == 0
    assert (launch["shared"], launch["stream"]) == (65536, 501)
    assert launch["function"] == 1011 and launch["args"] == (tensor, 7)
    # Once cuda:1 is current, the launch needs no switch; cuda:0's key (the same
    # record) loads its own function into cuda:0's context.
    devices.current = 1
    assert kernels.launch(on_1, (3, 2, 1), everything)
    assert devices.launches[-1]["current"] == 1
    devices.current = 0
    assert kernels.launch(KEY_A, (3, 2, 1), everything)
    assert [load["current"] for load in devices.loads] == [1, 0]
    assert devices.launches[-1]["current"] == 0
    assert devices.launches[-1]["function"] == 1002


def test_one_gpu_launches_through_the_launcher_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With one GPU visible, a launch costs no device check: the loaded kernel
    launches through the static launcher's own function."""
    devices = Devices(count=1)
    devices.install(monkeypatch)
    assert static_launch.launcher_for(0) == devices._launch_kernel


def test_a_kernel_first_needed_inside_a_capture_was_loaded_before_it(
    kernels: static_launch.PrebuiltKernels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FULL mode without warm-ups: a size whose specialization no eager call
    had is first seen inside a capture.  Its kernel was loaded at the first
    call outside one, with every kernel saved for the op and GPU, so the
    capture only launches."""
    devices = Devices(count=1)
    devices.install(monkeypatch)
    save(kernels, KEY_A)
    save(kernels, KEY_B)
    assert kernels.ready(KEY_A)
    devices.capturing = True
    assert kernels.launch(KEY_B, (1, 1, 1), (None, None, 3))
    assert [load["capturing"] for load in devices.loads] == [False, False]
    assert devices.launches[-1]["capturing"]
    # A key with nothing saved goes to Triton, as without prebuilt kernels.
    nothing_saved = (0, (4, False, 64), (torch.float32,), (True,), (4,))
    assert not kernels.ready(nothing_saved)
    assert len(devices.loads) == 2


def test_a_saved_kernel_not_loaded_before_a_capture_raises_naming_it(
    kernels: static_launch.PrebuiltKernels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The op's first call is itself captured: loading there would fail and
    invalidate the capture, and so would Triton's JIT.  It raises before any
    driver call, naming the op and the specialization; after the capture the
    kernel loads as usual."""
    devices = Devices(count=1)
    devices.install(monkeypatch)
    save(kernels, KEY_A)
    devices.capturing = True
    with pytest.raises(StitchRuntimeError) as caught:
        kernels.ready(KEY_A)
    message = str(caught.value)
    text = static_launch.specialization_text(KEY_A)
    for words in ("stitch::attention", text, "cuda:0", "inside a CUDA graph capture"):
        assert words in message, message
    assert devices.loads == []
    devices.capturing = False
    assert kernels.ready(KEY_A)
    assert [load["capturing"] for load in devices.loads] == [False]


def test_a_damaged_kernel_is_left_out_of_the_preload_and_named_when_asked_for(
    kernels: static_launch.PrebuiltKernels,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    devices = Devices(count=1)
    devices.install(monkeypatch)
    save(kernels, KEY_A)
    cubin = save(kernels, KEY_B)
    Path(cubin).write_bytes(b"damaged")
    assert kernels.ready(KEY_A)
    assert len(devices.loads) == 1  # B's cubin was not loaded
    assert not kernels.ready(KEY_B)
    assert "not the one saved" in caplog.text


# -- on a GPU: more than 48 KB of shared memory, eagerly and in a captured graph --

# The paged kernel in fp32 at head dim 128 (FP32_DOT), mixed and prefill batches
# (two specializations: BLOCK_M 16 and 64).
PAGED_FP32_128 = {"dtype": torch.float32, "dim": 128, "heads": 8, "kv_heads": 2}
BATCHES = {"mixed": [(0, 5), (7, 1), (3, 4), (20, 1)], "prefill": [(0, 40)]}


def test_the_fp32_head_dim_128_paged_kernel_needs_the_opt_in() -> None:
    """What the GPU test below relies on: the paged kernel in fp32 at head dim
    128 needs more than 48 KB of shared memory on an H100 (Triton's own sm_90
    compile, as the op's JIT makes it), and the two batches have two keys."""
    from test_prebuilt_kernels import compile_sm90

    texts = set()
    for requests in BATCHES.values():
        compiled, key = compile_sm90({"requests": requests, **PAGED_FP32_128})
        facts, _ = kernel_records.launch_facts(compiled)
        assert facts["shared"] > STATIC_SHARED, facts
        texts.add(static_launch.specialization_text(key))
    assert len(texts) == 2


_CAPTURE_PROCESS = textwrap.dedent("""
    import json, sys
    import torch
    sys.path.insert(0, sys.argv[2])
    from test_hf_paged_triton import paged_case
    from test_prebuilt_launch_risks import BATCHES, PAGED_FP32_128
    from stitch.core.errors import StitchRuntimeError
    from stitch.runtime.kernels.paged_attention import paged_attention_reference
    from stitch.runtime.store import location
    import stitch.runtime.kernels  # registers the ops

    location.note_cache_root(sys.argv[1])
    steps = sys.argv[3].split(",")  # "eager:<batch>" or "graph:<batch>"

    def step(how, batch):
        tensors, scalars = paged_case(BATCHES[batch], device="cuda", **PAGED_FP32_128)
        q, k, v, write, read, cu_q, cu_k, k_cache, v_cache, out = tensors
        expected = [t.clone() for t in (k_cache, v_cache, out)]
        paged_attention_reference(
            q, k, v, *expected[:2], write, read, cu_q, cu_k, expected[2], *scalars
        )
        args = (q, k, v, k_cache, v_cache, write, read, cu_q, cu_k, out, *scalars)
        torch.cuda.synchronize()
        if how == "eager":
            torch.ops.stitch.paged_attention(*args)
        else:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                torch.ops.stitch.paged_attention(*args)
            out.fill_(7.0)
            graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, expected[2], rtol=2e-2, atol=2e-2)
        assert torch.equal(k_cache, expected[0]) and torch.equal(v_cache, expected[1])

    result = {}
    try:
        for s in steps:
            step(*s.split(":"))
    except StitchRuntimeError as exc:
        result["error"] = str(exc)
    result["triton"] = "triton" in sys.modules
    print(json.dumps(result))
    """)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prebuilt_kernels_over_48_kb_launch_eagerly_and_in_captured_graphs(
    tmp_path: Path,
) -> None:
    """The fp32 paged kernel at head dim 128 (64 KB of shared memory on an
    H100): saved by one process through Triton, then launched without Triton
    by the next (the static launcher's opt-in), eagerly and inside a capture
    whose specialization no eager call had (loaded at the first call); a
    process whose first call is captured is told so, naming the op."""
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)

    from test_prebuilt_kernels import kernel_process

    def run(steps: str) -> dict[str, Any]:
        return kernel_process(_CAPTURE_PROCESS, root, steps)

    assert run("eager:mixed,eager:prefill") == {"triton": True}  # compiled, saved
    folder = Path(location.kernel_folder(str(root), "stitch::paged_attention"))
    records = [codec.read(OpKernelRecord, str(p)) for p in folder.glob("*.kernel")]
    assert len(records) == 2
    assert all(r.shared > STATIC_SHARED for r in records), [r.shared for r in records]
    assert run("eager:mixed,graph:prefill") == {"triton": False}
    got = run("graph:prefill")
    assert got["triton"] is False
    assert "stitch::paged_attention" in got.get("error", ""), got
    assert "inside a CUDA graph capture" in got["error"]
