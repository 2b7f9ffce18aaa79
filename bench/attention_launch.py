"""Host cost of one ``stitch::attention`` call on CUDA, and where it goes.

Run on a CUDA machine: ``python bench/attention_launch.py``.  Under PIECEWISE
CUDA graphs the attention runs eagerly between graph replays, once per layer,
so its host cost is paid ``layers`` times per forward.  Measured from an idle
GPU, as a forward issues them (``--calls`` calls in a row, per call):

``op``            ``torch.ops.stitch.attention`` (the dispatcher, then ours)
``python``        ``triton_attention.decode_attention`` (our checks and launch)
``jit``           the Triton kernel launched through ``kernel[grid](...)``
``compiled``      the same compiled kernel launched from its launcher, without
                  Triton's per-call binding and cache lookup (what JITFunction.run
                  does once the kernel is found), to see what a cached launch saves
``replay``        one CUDA graph replay, for scale

``compiled``'s output is checked against ``jit``'s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def host_us(fn: Callable[[], Any], calls: int, iters: int) -> float:
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) * 1e6 / calls)
    torch.cuda.synchronize()
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--calls", type=int, default=16)
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()

    import triton
    from triton import knobs
    from triton.runtime import driver

    from stitch.runtime.kernels import triton_attention
    from stitch.runtime.kernels.attention import AttentionCall

    kernels = triton_attention.triton_kernels()
    assert kernels is not None, "Triton did not import"
    n, h, d, length = args.tokens, args.heads, args.dim, args.max_len
    dt = torch.bfloat16
    q = torch.randn(n, h, d, device="cuda", dtype=dt)
    k, v = torch.randn_like(q), torch.randn_like(q)
    k_cache = torch.randn(n, length, h, d, device="cuda", dtype=dt)
    v_cache = torch.randn_like(k_cache)
    positions = torch.randint(0, length, (n,), device="cuda")
    out = torch.empty_like(q)
    scale = d**-0.5
    grid, params, values = triton_attention.kernel_arguments(
        AttentionCall(q, k, v, k_cache, v_cache, positions, out, scale)
    )
    constexprs = dict(zip(triton_attention.CONSTEXPRS, values, strict=True))
    kernel = kernels.decode_attention_kernel
    compiled = kernel[grid](*params, **constexprs)
    if hasattr(compiled, "result"):
        compiled = compiled.result()
    all_args = (*params, *constexprs.values())
    device = driver.active.get_current_device()

    def launch_compiled() -> None:
        stream = driver.active.get_current_stream(device)
        meta = compiled.launch_metadata(grid, stream, *all_args)
        compiled.run(
            grid[0],
            grid[1],
            1,
            stream,
            compiled.function,
            compiled.packed_metadata,
            meta,
            knobs.runtime.launch_enter_hook,
            knobs.runtime.launch_exit_hook,
            *all_args,
        )

    caches = (k_cache.clone(), v_cache.clone())
    kernel[grid](*params, **constexprs)
    expected = out.clone()
    k_cache.copy_(caches[0]), v_cache.copy_(caches[1])
    out.zero_()
    launch_compiled()
    torch.cuda.synchronize()
    same = torch.equal(out, expected)

    x = torch.randn(n, h * d, device="cuda", dtype=dt)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = (x * 2).sin() + 1
    del y

    rows = {
        "op": lambda: torch.ops.stitch.attention(
            q, k, v, k_cache, v_cache, positions, out, scale
        ),
        "python": lambda: triton_attention.decode_attention(
            q, k, v, k_cache, v_cache, positions, out, scale
        ),
        "jit": lambda: kernel[grid](*params, **constexprs),
        "compiled": launch_compiled,
        "replay": graph.replay,
    }
    print(
        f"triton {triton.__version__}, torch {torch.__version__}, "
        f"{torch.cuda.get_device_name()}; {n} tokens, {h} heads, dim {d}; "
        f"{args.calls} calls in a row from an idle GPU, median of {args.iters}"
    )
    from stitch.runtime.tables import markdown_table

    cells = []
    for name, fn in rows.items():
        for _ in range(5):
            fn()
        cells.append((name, f"{host_us(fn, args.calls, args.iters):.1f}"))
    print()
    print(markdown_table(("launch", "host µs per call"), cells, align="lr"))
    print(f"\ncompiled launch gives jit's output: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
