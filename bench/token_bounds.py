"""What checking token ids against the vocabulary would cost a decode step.

Run: ``python bench/token_bounds.py [--layers 2,32] [--tokens 1,8]``.

An out-of-range token id makes Inductor's CPU embedding kernel throw inside an
OpenMP region, which ends the process (stock ``torch.compile`` too).  Turning
that into an exception before any kernel runs means reading every id on the
host: a reduction and a host sync per forward.  This prints, side by side in
one process, the saved forward's decode step (``aot_compile`` of the example
llama, hidden 64, one thread) and the cost of each way to check the ids, in
microseconds (median over rounds) and as a share of the step:

``aminmax``    ``lo, hi = ids.aminmax(); lo >= 0 and hi < vocab`` (one
               reduction, two scalar reads)
``min, max``   ``int(ids.min()) >= 0 and int(ids.max()) < vocab``
``all``        ``bool(((ids >= 0) & (ids < vocab)).all())``
``in_range``   what the emitted check calls (``__stitch_in_range__``): the
               ids as a list up to 32 of them, else ``min, max``
"""

from __future__ import annotations

import argparse
import functools
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
    parser.add_argument("--layers", default="2,32")
    parser.add_argument("--tokens", default="1,8,64")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument(
        "--clock", choices=("perf_counter", "thread_time"), default="thread_time"
    )
    args = parser.parse_args()

    import torch

    from stitch.runtime import CompilationConfig, aot_compile
    from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs
    from stitch.runtime.saved.input_signature import in_range

    torch.set_num_threads(1)
    clock = getattr(time, args.clock)
    rows = []
    for layers in (int(x) for x in args.layers.split(",")):
        cfg = LlamaConfig(num_layers=layers)
        model = build_llama(cfg)
        config = CompilationConfig(cache_dir=tempfile.mkdtemp(prefix="stitch-bounds-"))
        vocab = cfg.vocab_size
        with torch.no_grad():
            compiled = aot_compile(
                model, llama_inputs(cfg, 8), config, dynamic_dims={0: [0], 1: [0]}
            )
            for tokens in (int(x) for x in args.tokens.split(",")):
                ids, pos = llama_inputs(cfg, tokens)

                def aminmax(ids: torch.Tensor = ids, vocab: int = vocab) -> bool:
                    lo, hi = ids.aminmax()
                    return bool(lo >= 0) and bool(hi < vocab)

                variants: dict[str, Callable[[], Any]] = {
                    "step": functools.partial(compiled, ids, pos),
                    "aminmax": aminmax,
                    "min, max": lambda ids=ids, vocab=vocab: int(ids.min()) >= 0
                    and int(ids.max()) < vocab,
                    "all": lambda ids=ids, vocab=vocab: bool(
                        ((ids >= 0) & (ids < vocab)).all()
                    ),
                    "in_range": functools.partial(in_range, ids, vocab),
                }
                med = time_variants(variants, args.iters, args.rounds, clock)
                rows.append((layers, tokens, med))
    print(
        f"\nexample llama, hidden 64, one thread; {args.clock}, median of "
        f"{args.rounds} rounds of {args.iters} calls; us per call (share of the step)\n"
    )
    from stitch.runtime.tables import markdown_table

    checks = ("aminmax", "min, max", "all", "in_range")
    cells = [
        (
            layers,
            tokens,
            f"{med['step']:.1f}",
            *(f"{med[k]:.2f} ({med[k] / med['step']:.1%})" for k in checks),
        )
        for layers, tokens, med in rows
    ]
    headers = ("layers", "tokens", "step", *checks)
    print(markdown_table(headers, cells, align="r" * len(headers)))
    print(f"\nmachine: {machine()}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end (1, 5, 15 min): {load}")


def time_variants(
    variants: dict[str, Callable[[], Any]], iters: int, rounds: int, clock: Any
) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in variants.items():
            start = clock()
            for _ in range(iters):
                fn()
            times[name].append((clock() - start) / iters * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


if __name__ == "__main__":
    main()
