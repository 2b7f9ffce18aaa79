"""vLLM's engine: eager, its own compile and Stitch, side by side.

Run (in the vLLM venv, see README.md)::

    python bench/vllm_engine.py [--layers 8 32] [--tokens 128] [--rounds 1] [--repeats 3]

For each depth, a tiny Llama (hidden 256, float32, random normal(0, 0.02)
weights saved with ``save_pretrained``) is served by five engines, each in its
own process (``stitch.runtime.harness.vllm_table``): vLLM eager; vLLM's default compile
cold, then warm over the same cache; Stitch split at vLLM's attention cold,
then warm.  Each engine times requests of 1 and 8 prompts x ``--tokens`` new
tokens (``--repeats`` times in the process, the median), after one first
request (timed separately: it pays vLLM's one-time compile of its sampler
helpers).  ``--rounds`` repeats the five processes with fresh caches,
interleaved, and reports medians over rounds.  Prints a markdown table per
depth, the ratios to vLLM's compile and the compile counters.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile

from stitch.runtime.harness.vllm_engine import save_checkpoint
from stitch.runtime.harness.vllm_table import (
    check_tokens,
    format_counters,
    format_table,
    measure,
)

BATCHES = (1, 8)


def ratios(rows: list[dict], tokens: int) -> str:
    """Stitch against vLLM's compile, per token and per start (medians over rounds)."""

    def med(i: int, pick) -> float:  # type: ignore[no-untyped-def]
        return statistics.median(pick(r) for r in rows[i]["results"])

    parts = []
    for b in BATCHES:
        stitch = med(4, lambda r, b=b: r["seconds"][str(b)])
        vllm = med(2, lambda r, b=b: r["seconds"][str(b)])
        parts.append(
            f"batch {b}: Stitch warm / vLLM warm per token {stitch / vllm:.3f}"
        )
    parts.append(
        "cold start Stitch / vLLM "
        f"{med(3, lambda r: r['start_s']) / med(1, lambda r: r['start_s']):.3f}"
    )
    parts.append(
        "warm start Stitch - vLLM eager "
        f"{med(4, lambda r: r['start_s']) - med(0, lambda r: r['start_s']):+.1f} s"
    )
    return "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(f"load average at start: {os.getloadavg()}")
    failed = False
    for layers in args.layers:
        with tempfile.TemporaryDirectory(prefix="stitch-vllm-bench-") as scratch:
            model = save_checkpoint(os.path.join(scratch, "model"), "llama", layers)
            rows = measure(
                model,
                tokens=args.tokens,
                batches=BATCHES,
                rounds=args.rounds,
                repeats=args.repeats,
                progress=lambda line, layers=layers: print(
                    f"  {layers} layers, {line}", flush=True
                ),
            )
        print(
            f"\n### {layers} layers, {args.tokens} new tokens, load {os.getloadavg()}\n"
        )
        print(format_table(rows, args.tokens, BATCHES))
        print("\n" + ratios(rows, args.tokens))
        print(format_counters(rows))
        wrong = check_tokens(rows)
        if wrong:
            failed = True
            print("TOKENS DIFFER from vLLM eager: " + "; ".join(wrong))
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
