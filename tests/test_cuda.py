"""CUDA graphs and the Triton attention kernel on a GPU (marked ``cuda``).

Every test here needs a CUDA device and is skipped without one.  Run them with::

    python -m pytest -m cuda -q

(``scripts/gpu_check.sh`` does, then runs the GPU benchmark.)  The same runtime
logic is covered on CPU by tests/test_cudagraph_cpu.py under emulated graphs;
what only a GPU shows is checked here: real capture and replay, the memory pool,
weak-referenced outputs and the Triton kernel.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from stitch.core.errors import StitchRuntimeError
from stitch.runtime import CompilationConfig, StitchBackend, compilation_counter
from stitch.runtime.cudagraph import CUDAGraphManager
from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs
from stitch.runtime.kernels.attention import attention_reference

# The vLLM-style baseline lives with the benchmark (bench/vllm_style.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from vllm_style import VllmStyleManager  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SIZES = [1, 2, 4, 8, 16, 32]
PIECES = 3  # compiled pieces of the 2-layer llama
# Inside, between and at the capture sizes, 1, the maximum and above it; sizes
# repeat with new inputs (replays must see them).
CALLS = [1, 3, 32, 5, 2, 17, 33, 8, 13, 64, 16, 31, 1, 4, 48, 3, 32]
NO_GUARDS = {"guard_filter_fn": lambda entries: [False] * len(entries)}


# -- the Triton kernel ----------------------------------------------------------------------
def _attention_case(
    n: int,
    heads: int,
    dim: int,
    length: int,
    dtype: torch.dtype,
    cache_dtype: torch.dtype,
    *,
    strided_v: bool,
    padding: bool,
    seed: int = 0,
    kv_heads: int | None = None,
) -> tuple[Any, ...]:
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device="cuda").to(dtype)

    kv_heads = kv_heads or heads
    q = randn(n, heads, dim)
    if strided_v:  # k and v as views into one qkv buffer, like the model's split
        qkv = randn(n, 3, kv_heads, dim)
        k, v = qkv[:, 1], qkv[:, 2]
    else:
        k, v = randn(n, kv_heads, dim), randn(n, kv_heads, dim)
    k_cache = randn(n + 2, length, kv_heads, dim, dtype=cache_dtype)
    v_cache = randn(n + 2, length, kv_heads, dim, dtype=cache_dtype)
    positions = torch.randint(0, length, (n,), generator=gen, device="cuda")
    positions[0] = 0
    if n > 1:
        positions[1] = length - 1
    if padding:
        positions[-1] = -1
    return q, k, v, k_cache, v_cache, positions


@pytest.mark.parametrize(
    ("n", "heads", "dim", "length", "dtype", "cache_dtype"),
    [
        (1, 2, 8, 16, torch.float32, torch.float32),
        (7, 4, 64, 100, torch.float32, torch.float32),
        (16, 8, 128, 257, torch.float16, torch.float16),
        (5, 2, 96, 33, torch.bfloat16, torch.bfloat16),
        (3, 2, 64, 40, torch.float16, torch.float32),
    ],
)
@pytest.mark.parametrize("strided_v", [False, True])
@pytest.mark.parametrize("padding", [False, True])
def test_triton_kernel_matches_torch(
    n: int,
    heads: int,
    dim: int,
    length: int,
    dtype: torch.dtype,
    cache_dtype: torch.dtype,
    strided_v: bool,
    padding: bool,
) -> None:
    from stitch.runtime.kernels import triton_attention

    kernels = triton_attention.triton_kernels()
    assert kernels is not None, "Triton did not import on this CUDA machine"
    q, k, v, k_cache, v_cache, positions = _attention_case(
        n, heads, dim, length, dtype, cache_dtype, strided_v=strided_v, padding=padding
    )
    scale = dim**-0.5
    ref_caches = (k_cache.clone(), v_cache.clone())
    expected = torch.full_like(q, 7.0)
    attention_reference(q, k, v, *ref_caches, positions, expected, scale)
    got = torch.full_like(q, 7.0)
    triton_attention.decode_attention(
        q, k, v, k_cache, v_cache, positions, got, scale, kernels=kernels
    )
    tolerance = (
        {"rtol": 1e-4, "atol": 1e-4}
        if dtype == torch.float32
        else {"rtol": 2e-2, "atol": 2e-2}
    )
    torch.testing.assert_close(got.float(), expected.float(), **tolerance)
    torch.testing.assert_close(k_cache, ref_caches[0], rtol=0, atol=0)
    torch.testing.assert_close(v_cache, ref_caches[1], rtol=0, atol=0)
    if padding:
        assert torch.equal(got[-1], torch.zeros_like(got[-1]))


@pytest.mark.parametrize(
    ("kv_heads", "sinks", "softcap", "window"),
    [(2, True, 0.0, 0), (8, False, 2.0, 0), (8, False, 0.0, 31), (2, True, 5.0, 70)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernel_features_match_torch(
    kv_heads: int, sinks: bool, softcap: float, window: int, dtype: torch.dtype
) -> None:
    """GQA, GPT-OSS's sinks, Gemma 2's softcap, a sliding window: as attention_reference."""
    from stitch.runtime.kernels import triton_attention

    kernels = triton_attention.triton_kernels()
    assert kernels is not None, "Triton did not import on this CUDA machine"
    q, k, v, k_cache, v_cache, positions = _attention_case(
        9, 8, 64, 300, dtype, dtype, strided_v=True, padding=True, kv_heads=kv_heads
    )
    gen = torch.Generator(device="cuda").manual_seed(3)
    extra = (
        torch.randn(8, generator=gen, device="cuda") * 2 if sinks else None,
        softcap,
        window,
    )
    ref_caches = (k_cache.clone(), v_cache.clone())
    expected = torch.full_like(q, 7.0)
    attention_reference(q, k, v, *ref_caches, positions, expected, 0.125, *extra)
    got = torch.full_like(q, 7.0)
    triton_attention.decode_attention(
        q, k, v, k_cache, v_cache, positions, got, 0.125, *extra, kernels=kernels
    )
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(
        got.float(), expected.float(), rtol=tolerance, atol=tolerance
    )
    torch.testing.assert_close(k_cache, ref_caches[0], rtol=0, atol=0)
    torch.testing.assert_close(v_cache, ref_caches[1], rtol=0, atol=0)


def test_op_dispatches_to_the_triton_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """``stitch::attention`` on CUDA launches the Triton kernel, once, on a grid per head."""
    from stitch.runtime.kernels import triton_attention

    kernels = triton_attention.triton_kernels()
    assert kernels is not None, "Triton did not import on this CUDA machine"
    grids: list[Any] = []

    class CountingKernel:
        def __getitem__(self, grid: Any) -> Any:
            grids.append(grid)
            return kernels.decode_attention_kernel[grid]

    # The op is registered with decode_attention itself; it asks triton_kernels()
    # for the kernel module on every call.
    monkeypatch.setattr(
        triton_attention,
        "triton_kernels",
        lambda: SimpleNamespace(decode_attention_kernel=CountingKernel()),
    )
    q, k, v, k_cache, v_cache, positions = _attention_case(
        4, 2, 32, 16, torch.float16, torch.float16, strided_v=True, padding=False
    )
    caches = (k_cache.clone(), v_cache.clone())
    expected = torch.empty_like(q)
    attention_reference(q, k, v, *caches, positions, expected, 0.2)
    out = torch.empty_like(q)
    torch.ops.stitch.attention(q, k, v, k_cache, v_cache, positions, out, 0.2)
    assert grids == [(4, 2)]
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)


def test_triton_kernel_is_capturable() -> None:
    q, k, v, k_cache, v_cache, positions = _attention_case(
        8, 4, 64, 64, torch.float16, torch.float16, strided_v=False, padding=True
    )
    out = torch.empty_like(q)
    torch.ops.stitch.attention(
        q, k, v, k_cache, v_cache, positions, out, 0.125
    )  # warm-up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.ops.stitch.attention(q, k, v, k_cache, v_cache, positions, out, 0.125)
    new = _attention_case(
        8,
        4,
        64,
        64,
        torch.float16,
        torch.float16,
        strided_v=False,
        padding=True,
        seed=1,
    )
    for static, fresh in zip((q, k, v, k_cache, v_cache, positions), new, strict=True):
        static.copy_(fresh)
    caches = (k_cache.clone(), v_cache.clone())
    expected = torch.empty_like(q)
    attention_reference(q, k, v, *caches, positions, expected, 0.125)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)


# -- the runtime ------------------------------------------------------------------------------
def _inputs(cfg: LlamaConfig, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, positions = llama_inputs(cfg, n, seed=seed, device="cuda")
    torch._dynamo.mark_dynamic(ids, 0)
    torch._dynamo.mark_dynamic(positions, 0)
    return ids, positions


class Served:
    """A llama compiled by Stitch with CUDA graphs, and its eager twin."""

    def __init__(
        self,
        cfg: LlamaConfig | None = None,
        *,
        shared_pool: bool = True,
        tolerance: tuple[float, float] = (1e-3, 1e-4),
        manager: Any = CUDAGraphManager,
        **fields: Any,
    ) -> None:
        torch._dynamo.reset()
        self.rtol, self.atol = tolerance
        self.cfg = cfg or LlamaConfig(num_layers=2)
        fields.setdefault("backend", "inductor")
        fields.setdefault("cudagraph_capture_sizes", SIZES)
        fields.setdefault("cudagraph_pad_values", {"positions": -1})
        self.config = CompilationConfig(disable_cache=True, **fields)
        self.backend = StitchBackend(
            self.config, cudagraphs=manager(self.config, shared_pool=shared_pool)
        )
        self.model = build_llama(self.cfg).cuda()
        self.eager = build_llama(self.cfg).cuda()
        self.compiled = torch.compile(
            self.model, backend=self.backend, fullgraph=True, options=dict(NO_GUARDS)
        )

    def __call__(self, n: int, seed: int) -> torch.Tensor:
        """One forward of both, compared; the output cloned (it lives until the next)."""
        with torch.inference_mode():
            got = self.compiled(*_inputs(self.cfg, n, seed)).clone()
            expected = self.eager(*_inputs(self.cfg, n, seed))
        torch.testing.assert_close(
            got.float(), expected.float(), rtol=self.rtol, atol=self.atol
        )
        return got

    def start_up(
        self, sizes: list[int] | None = None, *, compile_first: bool = True
    ) -> int:
        """Compile (first call, a warm-up at its size), then capture at start-up.

        The number of graphs captured by the start-up capture.
        """
        if compile_first:
            self(8, 0)
        before = compilation_counter.num_cudagraph_captured
        self.backend.cudagraphs.capture_sizes(lambda n: self(n, 100 + n), sizes)
        return compilation_counter.num_cudagraph_captured - before


@pytest.mark.parametrize(
    ("fields", "graphs"),
    [
        ({"cudagraph_mode": "PIECEWISE"}, PIECES * len(SIZES)),
        ({"cudagraph_mode": "FULL"}, len(SIZES)),
        (
            {"cudagraph_mode": "FULL_AND_PIECEWISE", "max_full_cudagraph_size": 4},
            3 + PIECES * 3,
        ),
        (
            {"cudagraph_mode": "PIECEWISE", "manager": VllmStyleManager},
            PIECES * len(SIZES),
        ),
        (
            {"cudagraph_mode": "PIECEWISE", "cudagraph_check_addresses": True},
            PIECES * len(SIZES),
        ),
        ({"cudagraph_mode": "PIECEWISE", "backend": "eager"}, PIECES * len(SIZES)),
    ],
    ids=[
        "piecewise",
        "full",
        "full_and_piecewise",
        "per_piece",
        "address_check",
        "eager_pieces",
    ],
)
def test_numerics_against_eager(fields: dict[str, Any], graphs: int) -> None:
    served = Served(**fields)
    assert served.start_up() == graphs
    served.backend.cudagraphs.forbid_capture()  # all sizes <= 32 are captured
    outputs = {}
    for step, n in enumerate(CALLS):
        out = served(n, seed=step)
        if n in outputs:  # the same size again, new inputs: the replay saw them
            assert not torch.equal(out, outputs[n])
        outputs[n] = out


@pytest.mark.parametrize("mode", ["PIECEWISE", "FULL"])
def test_bf16_model_against_eager(mode: str) -> None:
    # Inductor keeps fp32 where eager rounds to bf16: rounding-level differences.
    served = Served(
        LlamaConfig(num_layers=2, dtype=torch.bfloat16),
        tolerance=(5e-2, 1e-1),
        cudagraph_mode=mode,
    )
    served.start_up()
    for step, n in enumerate(CALLS):
        served(n, seed=step)


def test_capture_after_start_up_is_forbidden() -> None:
    served = Served(
        backend="eager",
        cudagraph_mode="PIECEWISE",
        cudagraph_forbid_capture_after_startup=True,
    )
    assert served.start_up(sizes=[32, 8]) == PIECES * 2
    served(7, seed=1)  # padded to 8: captured at start-up
    served(40, seed=2)  # above the largest capture size: no graphs
    with pytest.raises(StitchRuntimeError, match="at size 4 would be captured now"):
        served(3, seed=3)


def _reserved_by_capture(shared_pool: bool, lazy: bool = False) -> tuple[int, int]:
    cfg = LlamaConfig(
        num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024
    )
    served = Served(
        cfg, shared_pool=shared_pool, backend="eager", cudagraph_mode="PIECEWISE"
    )
    served(8, 0)  # the compile, outside what is measured
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    if lazy:  # NOTE: [capture what the first request needs]
        manager = served.backend.cudagraphs
        count = compilation_counter.num_cudagraph_captured
        manager.capture_sizes(lambda n: served(n, n), [1], defer_rest=True)
        for step, n in enumerate([3, 3, 17, 1, 17]):  # 4 and 32 on first use
            served(n, seed=step)
        assert manager.capture_pending(lambda n: served(n, 50 + n)) == 0
        graphs = compilation_counter.num_cudagraph_captured - count
    else:
        graphs = served.start_up(compile_first=False)
    torch.cuda.synchronize()
    return torch.cuda.memory_reserved() - before, graphs


def test_sizes_captured_later_share_the_pool_of_those_captured_first() -> None:
    """Size 1 before the first request, 4 and 32 as requests need them, the rest
    while idle: every size gets its graphs, numerics hold, and the pool grows
    no more than when every size is captured at start-up, largest first."""
    eager_order, graphs = _reserved_by_capture(True)
    lazy_order, lazy_graphs = _reserved_by_capture(True, lazy=True)
    print(
        f"graph memory: all at start-up {eager_order / 2**20:.1f} MiB, "
        f"size 1 first, the rest later {lazy_order / 2**20:.1f} MiB"
    )
    assert lazy_graphs == graphs == 5 * len(SIZES)
    assert lazy_order <= eager_order * 1.25 + 2**21


def test_one_shared_pool_takes_less_memory_than_a_pool_per_graph() -> None:
    shared, graphs = _reserved_by_capture(True)
    separate, graphs_separate = _reserved_by_capture(False)
    print(
        f"graph memory: shared pool {shared / 2**20:.1f} MiB, pool per graph "
        f"{separate / 2**20:.1f} MiB ({graphs} graphs)"
    )
    assert graphs == graphs_separate == 5 * len(SIZES)
    assert shared < separate


def _block_state(address: int) -> str:
    """The caching allocator's state of the block holding ``address``."""
    for segment in torch.cuda.memory_snapshot():
        start = segment["address"]
        for block in segment["blocks"]:
            begin = block.get("address", start)
            if begin <= address < begin + block["size"]:
                return block["state"]
            start = begin + block["size"]
    raise AssertionError(
        f"address {address:#x} is in no segment of the caching allocator"
    )


@pytest.mark.parametrize("mode", ["PIECEWISE", "FULL"])
def test_last_output_is_a_weak_reference(mode: str) -> None:
    """The forward's output is a view of graph-pool memory that the pool owns.

    Its block is free in the pool (the graph's weak reference does not keep it),
    so later captures reuse it; the next forward overwrites it.
    """
    served = Served(backend="eager", cudagraph_mode=mode)
    served.start_up()
    with torch.inference_mode():
        out = served.compiled(*_inputs(served.cfg, 8, 1))
        kept = out.clone()
        torch.cuda.synchronize()
        assert _block_state(out.data_ptr()) != "active_allocated"
        expected = served.eager(*_inputs(served.cfg, 8, 1))
    torch.testing.assert_close(kept, expected, rtol=1e-3, atol=1e-4)
    with torch.inference_mode():
        served.compiled(*_inputs(served.cfg, 8, 2))
    assert not torch.equal(out, kept)  # overwritten by the next forward, by contract


# -- saved forwards ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["PIECEWISE", "FULL_AND_PIECEWISE"])
def test_saved_forward_captures_its_graphs_in_a_second_process(
    tmp_path: Path, mode: str
) -> None:
    """A cold process compiles and saves; a fresh one loads, captures and serves, no compile.

    The warm process has an Inductor cache of its own, empty: every piece comes
    from the Stitch cache.  Both capture every size at start-up (as a server
    does), then serve sizes inside, between and above the capture sizes.
    """
    from aot_support import MODEL_SOURCE, PIECES, run_worker
    from backend_support import INDUCTOR_TOL

    model_file = tmp_path / "aot_test_model.py"
    model_file.write_text(MODEL_SOURCE)
    sizes = [1, 2, 4, 8]
    fields: dict[str, Any] = {
        "cudagraph_capture_sizes": sizes,
        "cudagraph_pad_values": {"positions": -1},
        "cudagraph_mode": mode,
    }
    graphs = PIECES * len(sizes)
    if mode == "FULL_AND_PIECEWISE":
        fields["max_full_cudagraph_size"] = 2
        graphs = 2 + PIECES * 2
    spec = {
        "model_file": str(model_file),
        "cache_dir": str(tmp_path / "cache"),
        "sizes": [8, 3, 3, 12, 1, 5, 8],
        "device": "cuda",
        "startup_capture": True,
        "config": fields,
    }
    cold = run_worker({**spec, "outputs": str(tmp_path / "cold.pt")})
    empty = tmp_path / "inductor-empty"
    warm = run_worker({**spec, "outputs": str(tmp_path / "warm.pt")}, empty)
    print(f"{mode}: cold {cold['seconds']}, warm {warm['seconds']} (s since start)")
    assert cold["warm"] is False and cold["path"], cold["warnings"]
    assert warm["warm"] is True, warm["warnings"]
    assert warm["warnings"] == []
    counter = warm["counter"]
    assert counter.get("num_backend_compilations", 0) == 0
    assert counter.get("num_inductor_compiles", 0) == 0
    assert counter["num_compiled_artifacts_loaded"] == PIECES
    # NOTE: [prebuilt Triton kernels]: every piece, Triton kernels included, is
    # launched from its record; the warm process imports no Inductor, Dynamo,
    # sympy or FSDP.
    assert counter["num_prebuilt_loads"] == PIECES
    imported = warm["imported"] + warm["heavy"]
    assert imported == [], {m: warm["import_stacks"].get(m) for m in imported}
    # NOTE: [an op's Triton kernel without Triton]: the cold process saved
    # stitch::attention's kernel, the warm one launches it without Triton.
    assert cold["triton"] is True and warm["triton"] is False, warm
    print("warm Inductor cache:", sorted(p.name for p in empty.glob("*")))
    for report in (cold, warm):
        # Triton pieces only: no CPU ISA probe (a C++ build and a torch import
        # per candidate ISA, 30-45 s on an H100 machine) in either process.
        assert report["isa_probe"] is False
        assert report["graph_runners"] == 1
        assert report["counter"]["num_cudagraph_captured"] == graphs
        assert max(report["diffs"].values()) < INDUCTOR_TOL["atol"], report["diffs"]
    cold_out, warm_out = torch.load(tmp_path / "cold.pt"), torch.load(
        tmp_path / "warm.pt"
    )
    for n in set(spec["sizes"]):  # rounding-level: the same kernels, run anew
        torch.testing.assert_close(warm_out[n], cold_out[n], rtol=1e-5, atol=1e-5)


def test_direct_launch_reuses_a_compiled_kernel_only_for_its_specialization(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second call of a layout launches the compiled kernel; another alignment compiles anew.

    NOTE: [launching the compiled kernel directly] in triton_attention.py.  Prebuilt
    kernels on disk are off here (tests/test_prebuilt_kernels.py launches those).
    """
    from stitch.runtime.kernels import static_launch, triton_attention

    if triton_attention._direct_launch() is None:
        pytest.skip("the direct launch is off for this Triton (DIRECT_LAUNCH_TRITON)")
    monkeypatch.setattr(static_launch, "enabled", lambda: False)
    triton_attention._compiled.clear()

    def make_case(seed: int) -> tuple[Any, ...]:
        return _attention_case(
            6,
            4,
            64,
            48,
            torch.bfloat16,
            torch.bfloat16,
            strided_v=True,
            padding=True,
            seed=seed,
        )

    for seed in range(3):  # a Triton launch, then two direct launches
        case = make_case(seed)
        caches = (case[3].clone(), case[4].clone())
        expected = torch.full_like(case[0], 7.0)
        attention_reference(*case[:3], *caches, case[5], expected, 0.125)
        got = torch.full_like(case[0], 7.0)
        torch.ops.stitch.attention(*case, got, 0.125)
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(case[3], caches[0], rtol=0, atol=0)
        assert len(triton_attention._compiled) == 1
    # q 2 bytes past a 16-byte boundary: a pointer Triton must not assume aligned
    q, k, v, k_cache, v_cache, positions = make_case(9)
    shifted = torch.empty(q.numel() + 1, device="cuda", dtype=q.dtype)[1:].view_as(q)
    shifted.copy_(q)
    assert shifted.data_ptr() % 16 != 0
    caches = (k_cache.clone(), v_cache.clone())
    expected = torch.full_like(q, 7.0)
    attention_reference(shifted, k, v, *caches, positions, expected, 0.125)
    got = torch.full_like(q, 7.0)
    torch.ops.stitch.attention(shifted, k, v, k_cache, v_cache, positions, got, 0.125)
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
    assert len(triton_attention._compiled) == 2
