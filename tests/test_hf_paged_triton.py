"""``stitch::paged_attention``'s Triton kernel against the torch reference: under
Triton's interpreter on CPU, and compiled on a GPU (marked ``cuda``).

The batches are built as transformers' engine builds them (NOTE: [the paged
batch of transformers' engine] in runtime/kernels/paged_attention.py): every sequence's rows
scattered over the cache, prefill chunks next to decode tokens, sliding-window
reads with sentinel rows, padding tokens and zero-length padding sequences.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import torch

from stitch.runtime.kernels.paged_attention import paged_attention_reference

SENTINEL = 1  # transformers' sentinel_index: a row of the trash sector


def paged_case(
    requests: list[tuple[int, int]],
    *,
    heads: int = 4,
    kv_heads: int = 2,
    dim: int = 16,
    sliding: int = 0,
    window: int = 0,
    read: bool = True,
    pad: int = 0,
    dtype: torch.dtype = torch.float32,
    cache_dtype: torch.dtype | None = None,
    softcap: float = 0.0,
    sinks: bool = False,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The op's tensor arguments (caches and ``out`` last written) and its
    scalars, for ``requests`` of ``(past, new)`` tokens.

    ``sliding``: a sliding-window layer over that many tokens (ring-buffer rows,
    read before the write, sentinel rows for the new keys); ``read=False``: no
    read indices (a batch of first prefills, the new keys are all the keys).
    """
    gen = torch.Generator().manual_seed(seed)
    # Rows 0 and 1 are the trash sector; 8 rows nobody uses, which must stay.
    rows_ = 2 + 8 + pad + sum(sliding or past + new for past, new in requests)
    free = iter((torch.randperm(rows_ - 2, generator=gen) + 2).tolist())
    reads: list[int] = []
    writes: list[int] = []
    cu_q, cu_k = [0], [0]
    for past, new in requests:
        if sliding:
            assert new <= sliding, "a chunk longer than the window writes the trash"
            ring = [next(free) for _ in range(sliding)]
            cached = min(past, sliding - 1)
            reads += [ring[p % sliding] for p in range(past - cached, past)]
            reads += [SENTINEL] * new
            writes += [ring[p % sliding] for p in range(past, past + new)]
            cu_k.append(cu_k[-1] + cached + new)
        else:
            rows = [next(free) for _ in range(past + new)]
            reads += rows
            writes += rows[past:]
            cu_k.append(cu_k[-1] + past + new)
        cu_q.append(cu_q[-1] + new)
    if not read:
        assert all(past == 0 for past, _ in requests)
        reads = []
    # Padding: tokens past the last sequence writing rows of their own, and
    # zero-length sequences (the boundaries plateau), as the engine pads.
    writes += [next(free) for _ in range(pad)]
    reads += [0] * pad if reads else []
    cu_q += [cu_q[-1]] * pad
    cu_k += [cu_k[-1]] * pad
    tokens = cu_q[-1] + pad

    def randn(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(dtype).to(device)

    def index(values: list[int], dtype: torch.dtype = torch.int64) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    cache_dtype = cache_dtype or dtype
    qkv = randn(tokens, heads + 2 * kv_heads, dim)  # k and v as views, as a model's
    query = qkv[:, :heads]
    key, value = qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]
    tensors = (
        query,
        key,
        value,
        index(writes),
        index(reads),
        index(cu_q, torch.int32),
        index(cu_k, torch.int32),
        randn(rows_, kv_heads, dim, dtype=cache_dtype),
        randn(rows_, kv_heads, dim, dtype=cache_dtype),
        torch.full((tokens, heads, dim), 7.0, dtype=dtype, device=device),
    )
    scalars = (
        dim**-0.5,
        not sliding,
        SENTINEL,
        sliding or window,
        softcap,
        randn(heads, dtype=torch.float32) * 2 if sinks else None,
    )
    return tensors, scalars


def _call(fn: Any, tensors: tuple[Any, ...], scalars: tuple[Any, ...], **kw) -> None:
    q, k, v, write, read, cu_q, cu_k, k_cache, v_cache, out = tensors
    fn(q, k, v, k_cache, v_cache, write, read, cu_q, cu_k, out, *scalars, **kw)


def check_case(case: dict[str, Any], kernels: Any) -> None:
    """The kernel's output and caches equal the reference's; the feature the
    case turns on changes the reference's numbers (a kernel ignoring it fails)."""
    from stitch.runtime.kernels.triton_paged import paged_attention_triton

    tensors, scalars = paged_case(**case)
    expected = tuple(t.clone() for t in tensors)
    _call(paged_attention_reference, expected, scalars)
    _call(paged_attention_triton, tensors, scalars, kernels=kernels)
    got_out, want_out = tensors[-1], expected[-1]
    half = got_out.dtype != torch.float32 or tensors[-3].dtype != torch.float32
    tolerance = 2e-2 if half else 2e-5
    torch.testing.assert_close(
        got_out.float(), want_out.float(), rtol=tolerance, atol=tolerance
    )
    assert torch.equal(tensors[-3], expected[-3]), "k_cache differs"
    assert torch.equal(tensors[-2], expected[-2]), "v_cache differs"
    tokens = got_out.shape[0]
    real = tokens - case.get("pad", 0)
    assert torch.equal(got_out[real:], torch.zeros_like(got_out[real:]))
    if any(case.get(name) for name in ("softcap", "sinks", "window")):
        plain = dict(case, softcap=0.0, sinks=False, window=0)
        tensors, scalars = paged_case(**plain)
        _call(paged_attention_reference, tensors, scalars)
        assert (tensors[-1].float() - want_out.float()).abs().max() > 0.05


MIXED = [(0, 4), (6, 3), (7, 1), (1, 1), (30, 17)]
CASES: dict[str, dict[str, Any]] = {
    "prefill_without_reads": dict(requests=[(0, 5), (0, 3), (0, 40)], read=False),
    "prefill": dict(requests=[(0, 5), (0, 40)]),
    "decode": dict(requests=[(5, 1), (9, 1), (2, 1), (70, 1)]),
    "mixed": dict(requests=MIXED),
    "mixed_padded": dict(requests=MIXED, pad=3),
    "gqa_3": dict(requests=MIXED, heads=6, kv_heads=2, dim=24),
    "gqa_8": dict(requests=[(3, 1), (0, 6), (20, 1)], heads=8, kv_heads=1),
    "mha": dict(requests=MIXED, heads=2, kv_heads=2),
    "window": dict(requests=MIXED, window=5),
    "sliding": dict(requests=[(0, 4), (6, 3), (7, 1), (1, 1), (30, 4)], sliding=4),
    "sliding_padded": dict(requests=[(9, 1), (2, 3), (0, 2)], sliding=4, pad=2),
    "sliding_without_reads": dict(
        requests=[(0, 4), (0, 2)], sliding=4, read=False, pad=1
    ),
    "softcap": dict(requests=MIXED, softcap=2.0),
    "sinks": dict(requests=MIXED, sinks=True),
    "sliding_sinks_softcap": dict(
        requests=[(0, 4), (12, 2), (5, 1)], sliding=4, sinks=True, softcap=5.0
    ),
    "fp16": dict(requests=MIXED, dtype=torch.float16),
    "fp16_fp32_cache": dict(
        requests=MIXED, dtype=torch.float16, cache_dtype=torch.float32
    ),
    "empty": dict(requests=[]),
}


def test_the_schema_is_the_one_graphs_were_traced_with() -> None:
    """Built from PagedCall's fields; a field's type, order, default or the
    written set changing would change what traced graphs call."""
    assert str(torch.ops.stitch.paged_attention.default._schema) == (
        "stitch::paged_attention(Tensor query, Tensor key, Tensor value, "
        "Tensor(a3!) k_cache, Tensor(a4!) v_cache, Tensor write_index, "
        "Tensor read_index, Tensor cu_seq_lens_q, Tensor cu_seq_lens_k, "
        "Tensor(a9!) out, float scale, bool read_after_write=True, "
        "int sentinel=-1, int window=0, float softcap=0., Tensor? sinks=None) -> ()"
    )


def test_the_op_on_cpu_takes_its_defaults_and_equals_the_reference() -> None:
    """The dispatcher leaves trailing defaults out of the call it makes."""
    tensors, scalars = paged_case(MIXED, window=3)
    expected = tuple(t.clone() for t in tensors)
    _call(paged_attention_reference, expected, scalars)
    _call(torch.ops.stitch.paged_attention, tensors, scalars[:4])
    assert torch.equal(tensors[-1], expected[-1])
    assert torch.equal(tensors[-3], expected[-3])
    assert (tensors[-1] != 7.0).any(), "out was not written"


# The child: every case under the interpreter (on before Triton is imported).
_INTERPRETED = """
import sys
sys.path.insert(0, sys.argv[1])
from stitch.runtime.kernels import triton_paged
from test_hf_paged_triton import CASES, check_case
kernels = triton_paged.triton_kernels()
assert kernels is not None
for name, case in CASES.items():
    try:
        check_case(case, kernels)
    except Exception as exc:
        raise AssertionError(f"case {name}: {exc}") from exc
print("ok", len(CASES))
"""


@pytest.mark.slow  # the README's suite runs it (triton 3.6 in the test extra)
def test_triton_paged_kernel_under_the_interpreter() -> None:
    """The CUDA kernel's logic on CPU tensors, where Triton is installed.

    A fresh process: the interpreter must be on before Triton is first imported.
    """
    pytest.importorskip("triton")
    result = subprocess.run(
        [sys.executable, "-c", _INTERPRETED, os.path.dirname(__file__)],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ok", str(len(CASES))], result.stdout


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "case",
    [
        *CASES,
        "bf16",
        "bf16_long",
    ],
)
def test_triton_paged_kernel_matches_torch_on_cuda(case: str) -> None:
    from stitch.runtime.kernels import triton_paged

    kernels = triton_paged.triton_kernels()
    assert kernels is not None, "Triton did not import on this CUDA machine"
    extra = {
        "bf16": dict(requests=MIXED, dtype=torch.bfloat16, dim=64),
        "bf16_long": dict(
            requests=[(0, 300), (90, 1), (0, 64), (600, 1), (200, 33)],
            dtype=torch.bfloat16,
            heads=8,
            kv_heads=2,
            dim=128,
            pad=5,
        ),
    }
    check_case(dict(CASES.get(case) or extra[case], device="cuda"), kernels)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_paged_op_dispatches_to_the_triton_kernel_on_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``stitch::paged_attention`` on CUDA tensors launches the Triton kernel once."""
    from types import SimpleNamespace

    from stitch.runtime.kernels import triton_paged

    kernels = triton_paged.triton_kernels()
    assert kernels is not None, "Triton did not import on this CUDA machine"
    grids: list[Any] = []

    class CountingKernel:
        def __getitem__(self, grid: Any) -> Any:
            grids.append(grid)
            return kernels.paged_attention_kernel[grid]

    monkeypatch.setattr(
        triton_paged,
        "triton_kernels",
        lambda: SimpleNamespace(paged_attention_kernel=CountingKernel()),
    )
    tensors, scalars = paged_case(MIXED, device="cuda")
    expected = tuple(t.clone() for t in tensors)
    _call(paged_attention_reference, expected, scalars)
    _call(torch.ops.stitch.paged_attention, tensors, scalars)
    assert len(grids) == 1
    torch.testing.assert_close(tensors[-1], expected[-1], rtol=2e-5, atol=2e-5)
