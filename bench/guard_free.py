"""Host time per forward: the Dynamo-entered call versus the guard-free AOT forward.

Run: ``python bench/guard_free.py [--layers 32] [--tokens 1] [--iters 200]``.

One process compiles the llama-like model once with Stitch (hidden 64, so the
pieces do little work and the host overhead shows) and calls the same compiled
pieces three ways, interleaved round by round:

``dynamo``        ``torch.compile(model, backend=StitchBackend(...))``: each call
                  enters Dynamo's frame, evaluates its guards, runs the transformed
                  bytecode and then the stitched function (today's path).
``aot, guards``   ``aot_compile(..., guards=True)``: torch's loaded function,
                  checking Dynamo's guards in Python on every call (the debug switch).
``aot``           ``aot_compile(...)``: the same bytecode as a plain function bound
                  to the model; no Dynamo frame, no guards (the serving path).
``eager``         the model itself, for scale.

All run on one thread (``torch.set_num_threads(1)``, set before compiling), so
the numbers are the calling thread's work; ``--clock thread_time`` counts only
this thread's CPU time (useful on a busy machine).  Prints microseconds per
forward (median over rounds) and the difference to the guard-free forward.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from warm_start import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=1, help="batch size")
    parser.add_argument("--iters", type=int, default=200, help="calls per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--clock", choices=("perf_counter", "thread_time"), default="perf_counter")
    args = parser.parse_args()

    import torch

    from stitch.runtime import CompilationConfig, StitchBackend, aot_compile
    from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs

    torch.set_num_threads(1)
    cfg = LlamaConfig(num_layers=args.layers)
    model = build_llama(cfg)
    cache = tempfile.mkdtemp(prefix="stitch-guard-free-")
    config = CompilationConfig(cache_dir=cache)
    ids, pos = llama_inputs(cfg, args.tokens)
    dims = {0: [0], 1: [0]}
    with torch.no_grad():
        aot = aot_compile(model, (ids, pos), config, dynamic_dims=dims)
        guarded = aot_compile(model, (ids, pos), config, dynamic_dims=dims, guards=True)
        dynamo = torch.compile(model, backend=StitchBackend(config), fullgraph=True)
        marked = llama_inputs(cfg, args.tokens)
        for t in marked:
            torch._dynamo.decorators.mark_unbacked(t, 0)
        dynamo(*marked)
    variants: dict[str, Callable[..., Any]] = {
        "dynamo": dynamo,
        "aot, guards": guarded,
        "aot": aot,
        "eager": model,
    }
    clock = getattr(time, args.clock)
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for name, fn in variants.items():  # warm-up, and a numerics check
            model.reset_kv_caches()
            out = fn(ids, pos)
            model.reset_kv_caches()
            ref = model(ids, pos)
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        for _ in range(args.rounds):
            for name, fn in variants.items():
                start = clock()
                for _ in range(args.iters):
                    fn(ids, pos)
                times[name].append((clock() - start) / args.iters * 1e6)

    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"\n{args.layers}-layer llama-like model, hidden {cfg.hidden_size}, batch "
        f"{args.tokens}, one thread; {args.clock}, median of {args.rounds} rounds of "
        f"{args.iters} calls\n"
    )
    print("| forward | us per forward | minus guard-free aot | / guard-free aot |")
    print("| --- | ---: | ---: | ---: |")
    for name in variants:
        print(
            f"| {name} | {med[name]:.1f} | {med[name] - med['aot']:+.1f} | "
            f"{med[name] / med['aot']:.2f}x |"
        )
    print(f"\nmachine: {machine()}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end (1, 5, 15 min): {load}")


if __name__ == "__main__":
    main()
