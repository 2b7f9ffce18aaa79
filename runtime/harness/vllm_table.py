"""vLLM eager, vLLM's own compile and Stitch, side by side, each engine in its own process.

``stitch run --vllm`` and ``bench/vllm_engine.py`` print this table.  Each row
is one fresh engine process (``python -m stitch.runtime.harness.vllm_engine``); a "warm"
row is a second process over the cache its "cold" row filled.  Rounds repeat
the whole sequence with fresh caches, interleaving the variants, and each cell
is the median over rounds (single processes swing by about 15% on a shared
2-core machine).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from .marked_result import marked_result

RESULT = "STITCH_VLLM_RESULT "
# vLLM's log line (v1/engine/core.py) timing its engine's initialization.
INIT_ENGINE = re.compile(
    r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+) s"
)
# Stitch's summary line (pipeline/tracing.py) for the backend call.
STITCH_CALL = re.compile(r"stitch: graph \w+: .*?, (?:cold|warm) start in ([0-9.]+)s")

# (label, variant, which cache: a fresh one, or the one the row before filled)
ROWS = (
    ("vLLM eager (enforce_eager=True)", "eager", "fresh"),
    ("vLLM default compile (CPU: mode 2, whole graph), cold", "vllm", "fresh"),
    ("the same, second process", "vllm", "same"),
    ("Stitch (mode 2, backend=stitch.runtime.vllm.backend), cold", "stitch", "fresh"),
    ("the same, second process", "stitch", "same"),
)


def run_variant(
    model: str,
    variant: str,
    cache: str,
    *,
    batches: str,
    tokens: int,
    repeats: int,
    busy: float = 1.0,
) -> dict[str, Any]:
    """One engine process; raises RuntimeError with its log's tail if it fails.
    ``busy``: the share of the time a tiered row's requests keep the engine
    busy while its pieces land (1: back to back)."""
    env = dict(os.environ, VLLM_CACHE_ROOT=cache)
    env.pop("STITCH_CACHE_DIR", None)
    command = [sys.executable, "-m", "stitch.runtime.harness.vllm_engine", model]
    command += [variant, "--batches", batches, "--max-tokens", str(tokens)]
    command += ["--rounds", str(repeats), "--busy", str(busy)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    result = marked_result(proc.stdout, RESULT)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"the {variant} engine failed:\n{log[-4000:]}")
    # The engine's own start after its processes and the model are up: the
    # profile run (where the backend is called), the KV cache, the warm-up.
    init = INIT_ENGINE.search(log)
    result["init_engine_s"] = float(init.group(1)) if init else None
    # Stitch's backend call, compile included where it is not tiered.
    call = STITCH_CALL.search(log)
    result["backend_call_s"] = float(call.group(1)) if call else None
    return result


def measure(
    model: str,
    *,
    tokens: int = 32,
    batches: tuple[int, ...] = (1, 8),
    rounds: int = 1,
    repeats: int = 3,
    progress: Callable[[str], None] = lambda line: None,
) -> list[dict[str, Any]]:
    """The rows of the table, each with its per-round results."""
    results: list[list[dict[str, Any]]] = [[] for _ in ROWS]
    for r in range(rounds):
        with tempfile.TemporaryDirectory(prefix="stitch-vllm-") as scratch:
            cache = ""
            for i, (label, variant, which) in enumerate(ROWS):
                if which == "fresh":
                    cache = os.path.join(scratch, f"cache{i}")
                result = run_variant(
                    model,
                    variant,
                    cache,
                    batches=",".join(map(str, batches)),
                    tokens=tokens,
                    repeats=repeats,
                )
                results[i].append(result)
                progress(
                    f"round {r + 1}/{rounds}: {label}: start {result['start_s']:.1f} s"
                )
    return [
        {"label": label, "variant": variant, "results": rs}
        for (label, variant, _), rs in zip(ROWS, results, strict=True)
    ]


def check_tokens(rows: list[dict[str, Any]]) -> list[str]:
    """Rows whose tokens differ from vLLM eager's (first round of each)."""
    want = rows[0]["results"][0]["tokens"]
    return [
        f"{row['label']}: batch {b}"
        for row in rows[1:]
        for b, toks in row["results"][0]["tokens"].items()
        if toks != want[b]
    ]


def _median(row: dict[str, Any], pick: Callable[[dict[str, Any]], float]) -> float:
    return statistics.median(pick(r) for r in row["results"])


def format_table(
    rows: list[dict[str, Any]], tokens: int, batches: tuple[int, ...] = (1, 8)
) -> str:
    """A markdown table: start, first request, time per request and per token."""
    # Imported here: the engine processes import this module too, and print none.
    from stitch.runtime.tables import markdown_table

    headers = ["run", "engine start", "first request"]
    for b in batches:
        headers += [f"{b} x {tokens} tokens", f"ms/token ({b})"]
    cells = []
    for row in rows:
        line = [
            row["label"],
            f"{_median(row, lambda r: r['start_s']):.1f} s",
            f"{_median(row, lambda r: r['first_request_s']):.2f} s",
        ]
        for b in batches:
            seconds = _median(row, lambda r, b=b: r["seconds"][str(b)])
            line += [f"{seconds:.3f} s", f"{1000 * seconds / tokens:.2f}"]
        cells.append(line)
    return markdown_table(headers, cells, align="l" + "r" * (len(headers) - 1))


def format_counters(rows: list[dict[str, Any]]) -> str:
    """What each engine's worker compiled or loaded (first round)."""
    lines = []
    for row in rows:
        c = row["results"][0]["counters"]
        s = c["stitch"]
        lines.append(
            f"{row['label']}: Dynamo graphs {c['dynamo_graphs']}, vLLM AOT "
            f"compiles {c['vllm_aot_compiles']} / loads {c['vllm_aot_loaded']}, "
            f"Stitch backend calls {s['num_backend_compilations']}, Inductor "
            f"compiles {s['num_inductor_compiles']}, prebuilt loads "
            f"{s['num_prebuilt_loads']}"
        )
    return "\n".join(lines)
