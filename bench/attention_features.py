"""What attention sinks, softcapping and sliding windows cost, side by side.

Run: ``python bench/attention_features.py [--iters 100] [--rounds 5]`` on a CUDA
machine (on CPU it times the torch paths only, at smaller shapes).

Two tables, each variant timed in turns (``--rounds`` rounds of ``--iters``
calls, the median of rounds), every output checked against its reference first:

1. ``stitch::hf_attention`` (transformers models with
   ``attn_implementation="stitch"``): it has no Triton kernel; without sinks
   or softcap it runs PyTorch's SDPA, with either it materializes the scores
   (``_explicit_attention``: SDPA lacks both).  The ratio is that fallback's
   cost against SDPA on the same shape (a GPT-OSS-like layer: 64 query heads,
   8 key/value heads, head dim 64, bfloat16), decode and prefill.
2. ``stitch::attention`` (the examples' decode op): the Triton kernel with
   each feature against the kernel without it, and against the torch
   implementation of the same feature.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

import stitch.runtime.examples  # noqa: F401 - registers stitch::attention
from stitch.runtime.kernels import triton_attention
from stitch.runtime.kernels.attention import attention_reference
from stitch.runtime.kernels.hf_attention import hf_attention_reference
from stitch.runtime.tables import markdown_table


def timer(device: str) -> Callable[[Callable[[], None], int], float]:
    def run(fn: Callable[[], None], iters: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / iters * 1e6

    return run


def compare(
    variants: dict[str, Callable[[], None]], iters: int, rounds: int, device: str
) -> dict[str, float]:
    run = timer(device)
    for fn in variants.values():
        run(fn, 3)  # warm-up: Triton compiles, caches fill
    per_round: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            per_round[name].append(run(fn, iters))
    return {k: statistics.median(v) for k, v in per_round.items()}


def hf_table(device: str, dtype: torch.dtype, iters: int, rounds: int) -> None:
    heads, kv_heads, dim = (64, 8, 64) if device == "cuda" else (8, 2, 64)
    shapes = [("decode", 8, 1, 4096), ("prefill", 1, 2048, 2048)]
    if device != "cuda":
        shapes = [("decode", 4, 1, 512), ("prefill", 1, 256, 256)]
    print(
        "\n### stitch::hf_attention: the torch fallback for sinks and softcap against SDPA\n"
    )
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for label, batch, q_len, kv_len in shapes:
        q = torch.randn(batch, heads, q_len, dim, device=device, generator=gen).to(
            dtype
        )
        k, v = (
            torch.randn(batch, kv_heads, kv_len, dim, device=device, generator=gen).to(
                dtype
            )
            for _ in "kv"
        )
        mask = None
        causal = q_len > 1
        out = q.new_empty(batch, q_len, heads, dim)
        sinks = torch.randn(1, heads, 1, 1, device=device, generator=gen)
        scale = dim**-0.5
        variants = {
            "sdpa": functools.partial(
                hf_attention_reference, q, k, v, mask, out, scale, causal
            ),
            "sinks": functools.partial(
                hf_attention_reference, q, k, v, mask, out, scale, causal, sinks
            ),
            "softcap": functools.partial(
                hf_attention_reference, q, k, v, mask, out, scale, causal, None, 50.0
            ),
        }
        t = compare(variants, iters, rounds, device)
        rows.append(
            (
                label,
                f"{batch} x {q_len} x {kv_len}",
                f"{t['sdpa']:.1f}",
                f"{t['sinks']:.1f}",
                f"{t['softcap']:.1f}",
                f"{t['sinks'] / t['sdpa']:.2f}x",
                f"{t['softcap'] / t['sdpa']:.2f}x",
            )
        )
    headers = ("shape", "batch x q x kv", "SDPA µs", "sinks µs", "softcap µs")
    headers += ("sinks / SDPA", "softcap / SDPA")
    print(markdown_table(headers, rows, align="llrrrrr"))


def kernel_table(device: str, dtype: torch.dtype, iters: int, rounds: int) -> None:
    if device != "cuda":
        print("\n(no CUDA: the Triton kernel table needs a GPU)")
        return
    kernels = triton_attention.triton_kernels()
    n, heads, kv_heads, dim, length = 64, 32, 8, 128, 4096
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(n, heads, dim, device=device, generator=gen).to(dtype)
    k, v = (
        torch.randn(n, kv_heads, dim, device=device, generator=gen).to(dtype)
        for _ in "kv"
    )
    caches = [
        torch.randn(n, length, kv_heads, dim, device=device, generator=gen).to(dtype)
        for _ in "kv"
    ]
    positions = torch.randint(length // 2, length, (n,), device=device, generator=gen)
    sinks = torch.randn(heads, device=device, generator=gen)
    out = torch.empty_like(q)
    cases = {
        "none": (None, 0.0, 0),
        "sinks": (sinks, 0.0, 0),
        "softcap 50": (None, 50.0, 0),
        "window 128": (None, 0.0, 128),
        "all three": (sinks, 50.0, 128),
    }
    print(
        f"\n### stitch::attention: the Triton kernel per feature ({n} tokens, {heads}/{kv_heads} heads, dim {dim}, positions {length // 2}-{length})\n"
    )
    rows = []
    base = None
    for name, extra in cases.items():
        expected, got = torch.empty_like(q), torch.empty_like(q)
        attention_reference(
            q, k, v, *[c.clone() for c in caches], positions, expected, 0.1, *extra
        )
        triton_attention.decode_attention(
            q,
            k,
            v,
            *[c.clone() for c in caches],
            positions,
            got,
            0.1,
            *extra,
            kernels=kernels,
        )
        torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=2e-2)
        variants = {
            "kernel": functools.partial(
                triton_attention.decode_attention,
                *(q, k, v, *caches, positions, out, 0.1, *extra),
                kernels=kernels,
            ),
            "torch": functools.partial(
                attention_reference, q, k, v, *caches, positions, out, 0.1, *extra
            ),
        }
        t = compare(variants, iters, rounds, device)
        base = base or t["kernel"]
        rows.append(
            (
                name,
                f"{t['kernel']:.1f}",
                f"{t['kernel'] / base:.2f}x",
                f"{t['torch']:.1f}",
                f"{t['torch'] / t['kernel']:.1f}x",
            )
        )
    headers = ("feature", "kernel µs", "kernel / no feature", "torch µs")
    print(markdown_table((*headers, "torch / kernel"), rows, align="lrrrr"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"device: {name}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}"
    )
    with torch.no_grad():
        hf_table(device, dtype, args.iters, args.rounds)
        kernel_table(device, dtype, args.iters, args.rounds)


if __name__ == "__main__":
    main()
