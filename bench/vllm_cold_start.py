"""vLLM's engine from an empty cache: Dynamo alone, Stitch, and Stitch's tiered start.

Run (in the vLLM venv, see README.md)::

    python bench/vllm_cold_start.py [--layers 4] [--tokens 16]

NOTE: [a tiered start] (runtime/pipeline/tiered/tier.py).  A tiny Llama (hidden
256, float32, random normal(0, 0.02) weights saved with ``save_pretrained``,
NOTE: [realistic weights]) is served by one engine per row, each in its own
process with an empty vLLM and Stitch cache (``stitch.runtime.harness
.vllm_engine``): vLLM eager; vLLM's piecewise compile with its ``eager``
backend (Dynamo and the split, no Inductor: the target's reference); Stitch;
Stitch with ``tiered_start``; a second process over the tiered row's
cache; and the tiered start with its workers as the engine's equals
(``$STITCH_SERVING_FIRST=0``, NOTE: [serving first]); ``--rows`` adds one
with its workers on the one core vLLM's CPU worker pins itself to on 2 cores
(``onecore``, as before NOTE: [the cores a compile worker runs on]).  "ready"
is the ``LLM(...)`` constructor's time (the engine can take requests), "first
request" one prompt's ``--tokens`` new tokens after it.
The tiered row then sends one-prompt requests until every piece has been
swapped in ("settled", from the process start), each compared with eager's
tokens, before the batches are timed; ``--busy`` spaces those requests out.
"engine's init" is vLLM's own log line for the profile run (where the
backend is called), the KV cache and the warm-up: the part of "ready" a
backend changes, the rest being three processes' imports.

Results: docs/performance.md ("Cold start").
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile

from stitch.runtime.harness.vllm_engine import busy_share, save_checkpoint
from stitch.runtime.harness.vllm_table import run_variant

ROWS = (
    ("vLLM eager (enforce_eager)", "eager", "fresh"),
    ('vLLM mode 2, backend "eager" (Dynamo alone)', "dynamo", "fresh"),
    ("Stitch, cold", "stitch", "fresh"),
    ("Stitch, tiered_start, cold", "tiered", "fresh"),
    ("the same, second process", "tiered", "same"),
    ("Stitch, tiered_start, workers as equals, cold", "equals", "fresh"),
    (
        "Stitch, tiered_start, workers on the engine worker's core, cold",
        "onecore",
        "fresh",
    ),
)
# The rows run with an environment of their own: "equals" turns off NOTE:
# [serving first] (the workers share the cores with the engine as equals).
# "onecore" puts them on the one core vLLM's CPU worker pins itself to on 2
# cores, as before NOTE: [the cores a compile worker runs on].
ROW_ENV = {
    "equals": {"STITCH_SERVING_FIRST": "0"},
    "onecore": {"STITCH_COMPILE_CPUS": "0"},
}


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def row(label: str, result: dict, eager: dict) -> list[str]:
    want = eager["tokens"]["1"][0]
    during = result.get("tokens_meanwhile", [])
    equal = all(result["tokens"][b] == eager["tokens"][b] for b in eager["tokens"])
    equal = equal and all(t == want for t in during)
    compiles = result["counters"]["stitch"].get("num_inductor_compiles", 0)
    settled = result.get("settled_s") if result.get("tiers") else None
    ms = 1000 * result["seconds"]["8"] / (8 * result["max_tokens"])
    return [
        label,
        f"{result['start_s']:.2f}",
        seconds(result.get("init_engine_s")),
        seconds(result.get("backend_call_s")),
        f"{result['first_request_s']:.2f}",
        f"{settled:.2f}" if settled is not None else "-",
        f"{len(during)}" if "tokens_meanwhile" in result else "-",
        "= eager" if equal else "**differ**",
        str(compiles),
        f"{ms:.2f}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument(
        "--rows",
        type=lambda text: text.split(","),
        help="these rows, in this order, eager first (its tokens are the "
        "reference): eager, dynamo, stitch, tiered, same, equals, onecore; a row may "
        "come again (two runs side by side)",
    )
    parser.add_argument(
        "--busy",
        type=busy_share,
        default=1.0,
        help="the share of the time the tiered rows' one-prompt requests keep "
        "the engine busy until every piece has landed (1, the default: back to back)",
    )
    args = parser.parse_args(argv)
    rows = tuple(r for r in ROWS if r[1] != "onecore")
    if args.rows:
        by_name = {("same" if w == "same" else v): (lab, v, w) for lab, v, w in ROWS}
        unknown = [r for r in args.rows if r not in by_name]
        if unknown or args.rows[0] != "eager":
            parser.error(f"--rows {args.rows}: eager first, then of {sorted(by_name)}")
        rows = tuple(by_name[r] for r in args.rows)
    with tempfile.TemporaryDirectory(prefix="stitch-vllm-cold-") as scratch:
        model = save_checkpoint(os.path.join(scratch, "model"), "llama", args.layers)
        results, cache = [], ""
        for i, (label, variant, which) in enumerate(rows):
            if which == "fresh":
                cache = os.path.join(scratch, f"cache{i}")
            print(f"  {label} ...", file=sys.stderr, flush=True)
            saved = dict(os.environ)
            os.environ.update(ROW_ENV.get(variant, {}))
            try:
                result = run_variant(
                    model,
                    "tiered" if variant in ROW_ENV else variant,
                    cache,
                    batches="1,8",
                    tokens=args.tokens,
                    repeats=1,
                    busy=args.busy,
                )
            finally:
                os.environ.clear()
                os.environ.update(saved)
            result["max_tokens"] = args.tokens
            results.append(result)
    eager = results[0]
    headers = [
        "engine",
        "ready (s)",
        "engine's init (s)",
        "Stitch's backend call (s)",
        "first request (s)",
        "settled (s)",
        "requests meanwhile",
        "tokens",
        "Inductor compiles",
        "ms/token (batch 8)",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for (label, _, _), result in zip(rows, results, strict=True):
        lines.append("| " + " | ".join(row(label, result, eager)) + " |")
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"vLLM's engine, Llama {args.layers} layers x 256, {args.tokens} new tokens; "
        f"requests busy {args.busy:g} of the time while pieces land\n"
    )
    print("\n".join(lines))
    colds = [
        r["backend_call_s"]
        for (_, v, _), r in zip(rows, results, strict=True)
        if v == "stitch" and r.get("backend_call_s")
    ]
    for (label, _, _), result in zip(rows, results, strict=True):
        for tier in result.get("tiers", []):
            last = tier["last_swap_at"]
            ratio = (
                f" ({last / colds[0]:.2f}x Stitch's cold compile)"
                if colds and last
                else ""
            )
            print(
                f"\n{label}: backend returned at {tier['returned_at']:.2f} s, last "
                f"swap at {last} s{ratio}, uncompiled {tier['uncompiled']}"
            )


if __name__ == "__main__":
    main()
