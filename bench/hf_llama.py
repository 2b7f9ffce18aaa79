"""A transformers Llama: eager, ``torch.compile`` default, and Stitch, side by side.

Run: ``python bench/hf_llama.py [--layers 8] [--hidden 256] [--iters 50] [--rounds 5]``
(needs ``pip install -e '.[hf]'``).

The model is ``LlamaForCausalLM`` built from a config (random weights, no
download): 8 layers, hidden size 256, 8 heads over 4 key/value heads.  One
forward over ``batch`` sequences of ``seq`` tokens (``use_cache=False``) is
timed for each shape in three variants:

``eager``          the model as it is;
``torch.compile``  ``torch.compile(model)``: Inductor on the whole graph
                   (``dynamic=None``: the second shape recompiles, batch dynamic);
``stitch``         ``torch.compile(model, backend=StitchBackend(), dynamic=True)``:
                   split at SDPA (a default splitting op), Inductor pieces, the
                   attention run eagerly between them by the emitted function.

Compiles happen in a warm-up before any timing; the first-call time is printed
apart.  The variants are timed in turns (``--rounds`` rounds of ``--iters``
forwards each, the median per round, then the median of rounds), so a busy
machine slows them alike; ratios are to eager and to ``torch.compile``.
Every output is checked against eager first.  ``--threads 1`` on a machine
other jobs keep busy: with two OpenMP threads on two busy cores, eager PyTorch
ran 10-30x slower than with one in our runs (threads spinning at barriers).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

SHAPES = ((1, 16), (8, 16))
VARIANTS = ("eager", "torch.compile", "stitch")


def build(layers: int, hidden: int) -> torch.nn.Module:
    from stitch.runtime.hf import build_model

    return build_model(
        "llama",
        layers=layers,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_attention_heads=8,
        num_key_value_heads=4,
    )


def inputs(batch: int, seq: int) -> dict[str, Any]:
    from stitch.runtime.hf import example_inputs

    return example_inputs("llama", batch, seq, seed=batch * 1000 + seq)


def variants(model: torch.nn.Module, cache_dir: str) -> dict[str, Callable[..., Any]]:
    from stitch.runtime import CompilationConfig, StitchBackend

    stitch = StitchBackend(CompilationConfig(cache_dir=cache_dir))
    return {
        "eager": model,
        "torch.compile": torch.compile(model),
        "stitch": torch.compile(model, backend=stitch, dynamic=True),
    }


def time_ms(fn: Callable[..., Any], kwargs: dict[str, Any], iters: int, clock: Callable[[], float]) -> float:
    times = []
    for _ in range(iters):
        start = clock()
        fn(**kwargs)
        times.append((clock() - start) * 1e3)
    return statistics.median(times)


def run(args: argparse.Namespace) -> str:
    clock = time.thread_time if args.clock == "thread_time" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(args.layers, args.hidden)
    cache_dir = tempfile.mkdtemp(prefix="stitch-bench-")
    fns = variants(model, cache_dir)
    first_call: dict[tuple[str, tuple[int, int]], float] = {}
    errors: dict[tuple[str, tuple[int, int]], float] = {}
    results: dict[tuple[str, tuple[int, int]], list[float]] = {}
    with torch.no_grad():
        for shape in SHAPES:
            kwargs = inputs(*shape)
            ref = model(**kwargs).logits
            for name, fn in fns.items():
                start = time.perf_counter()
                out = fn(**kwargs).logits
                first_call[name, shape] = time.perf_counter() - start
                errors[name, shape] = (out - ref).abs().max().item()
                for _ in range(3):
                    fn(**kwargs)
        for _ in range(args.rounds):
            for shape in SHAPES:
                kwargs = inputs(*shape)
                for name, fn in fns.items():
                    results.setdefault((name, shape), []).append(
                        time_ms(fn, kwargs, args.iters, clock)
                    )

    lines = [
        f"transformers LlamaForCausalLM: {args.layers} layers, hidden {args.hidden}, "
        f"8 heads / 4 kv heads, float32, CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()} ({os.cpu_count()} CPUs); "
        f"median of {args.rounds} rounds x {args.iters} forwards, clock {args.clock}",
        "",
        "| batch x seq | eager ms | torch.compile ms | stitch ms | stitch / eager | "
        "stitch / torch.compile | max abs err (compile, stitch) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for shape in SHAPES:
        ms = {name: statistics.median(results[name, shape]) for name in VARIANTS}
        lines.append(
            f"| {shape[0]} x {shape[1]} | {ms['eager']:.3f} | {ms['torch.compile']:.3f} | "
            f"{ms['stitch']:.3f} | {ms['stitch'] / ms['eager']:.2f} | "
            f"{ms['stitch'] / ms['torch.compile']:.2f} | "
            f"{errors['torch.compile', shape]:.1e}, {errors['stitch', shape]:.1e} |"
        )
    lines += ["", "first call (compile included), seconds:", ""]
    lines.append("| batch x seq | " + " | ".join(VARIANTS) + " |")
    lines.append("| --- |" + " ---: |" * len(VARIANTS))
    for shape in SHAPES:
        cells = " | ".join(f"{first_call[name, shape]:.2f}" for name in VARIANTS)
        lines.append(f"| {shape[0]} x {shape[1]} | {cells} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--iters", type=int, default=50, help="forwards per round (default 50)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant (default 5)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (default: torch's choice); on a machine other "
        "jobs keep busy, 1 avoids OpenMP threads spinning against them",
    )
    parser.add_argument(
        "--clock",
        choices=("perf_counter", "thread_time"),
        default="perf_counter",
        help="wall time, or CPU time of this thread (with --threads 1 only: other "
        "threads' time is not counted)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    print(run(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
