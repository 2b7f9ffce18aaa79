"""A cold start, side by side: Dynamo alone, Stitch compiling first, and Stitch's tiered start.

Usage::

    python bench/cold_start.py              # examples at 3 and 32 layers, the engine
    python bench/cold_start.py --quick      # the 3-layer example alone

Every run is a fresh process with empty Stitch and Inductor caches (but
"warm", which reuses the tiered run's), one after the other in one
invocation.  The runs:

- ``dynamo``: ``torch.compile(backend="eager")``, Dynamo alone;
- ``cold``: Stitch as today, every piece compiled before the first output;
- ``tiered``: ``CompilationConfig(tiered_start=True)`` (NOTE: [a tiered
  start]): it serves at once and swaps compiled pieces in;
- ``spawned``: the same with spawned compile workers
  (``$STITCH_COMPILE_START=spawn``, as on a GPU: NOTE: [forked or spawned
  compile workers]), in a cache of its own; they start when the backend is
  made, inside the clock (NOTE: [pre-started compile workers]);
- ``equals``: the tiered start with ``$STITCH_SERVING_FIRST=0``: its workers
  share the cores with the serving process as equals, never paused (the
  default pauses them while they make it wait: NOTE: [serving first]);
- ``warm``: a start after the tiered run, from the entry its workers filled.

For the built-in example (8 tokens a forward, ``dynamic=True``), "first
output" is seconds from ``torch.compile`` (the model built) to the first
forward's output; "last swap" the same clock at the tiered run's last swap,
while forwards run back to back (``--busy 0.5``: each followed by a sleep as
long, a serving process busy half the time); "during" the median time of those forwards
(what the compile costs the serving process); "ms/forward" the median of 50
forwards after the last swap (the cold run's after its compile); "max err" the largest
difference from eager over every forward of the run, swaps included.

For transformers' engine (``--engine``: the tiny Llama of docs/transformers.md and a
4-layer one; 8 prompts of 1-61 tokens, 16 new tokens each), "first output" is
seconds from the start of the process to the first token of a one-request
warm-up, the batch runs right after it (during the swaps, for the tiered run),
and a second batch after the last swap gives "ms/token"; "tokens" compares
every run's greedy tokens with eager's.  There, "dynamo" is Stitch with
``CompilationConfig(backend="eager")``: Dynamo and the split, no Inductor.

With ``--aot``, the same example through ``aot_compile`` (as ``stitch run``
compiles it): "cold" with ``tiered_start=False`` (its default there), "tiered"
with ``True``, and "saved at return" says whether the saved forward was on
disk when ``aot_compile`` returned (a tiered start writes it at the last
swap, NOTE: [where a tiered start is the default]).

The compile without weights: ``bench/weightless_compile.py``; the first output
in rounds, with where its time goes: ``bench/first_output.py``.

Results: docs/performance.md ("Cold start").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

STARTED = time.perf_counter()
RESULT = "COLD_START_RESULT "
# How long a tiered run serves, at most, for its last swap (--wait).
WAIT_S = float(os.environ.get("COLD_START_WAIT_S", "900"))
# The share of the time a tiered run's serving loop is busy (--busy): 1, forwards
# back to back; 0.5, each forward followed by a sleep as long.
BUSY = float(os.environ.get("COLD_START_BUSY", "1"))
README_LLAMA = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def example_child(
    run: str, layers: int, cache: str, aot: bool = False
) -> dict[str, Any]:
    import torch

    from stitch.runtime import CompilationConfig, StitchBackend
    from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs

    cfg = LlamaConfig(num_layers=layers)
    model = build_llama(cfg)
    sizes = (8, 5, 3, 7)
    batches = [llama_inputs(cfg, n, seed=n) for n in sizes]

    def forward(fn: Any, args: Any) -> torch.Tensor:
        model.reset_kv_caches()
        with torch.no_grad():
            return fn(*args)

    refs = [forward(model, a) for a in batches]
    backend = None
    t0 = time.perf_counter()
    if run == "dynamo":
        fn = torch.compile(model, backend="eager", dynamic=True)
    else:
        config = CompilationConfig(cache_dir=cache, tiered_start=run != "cold")
        start_as(run)
        backend = StitchBackend(config)
        fn = torch.compile(model, backend=backend, dynamic=True)
        if aot:
            fn, saved = aot_example(model, batches[0], config)
            backend = fn.backend
    err = (forward(fn, batches[0]) - refs[0]).abs().max().item()
    first = time.perf_counter() - t0
    out: dict[str, Any] = {"first_s": first, "forwards_during": 0}
    if aot and run != "dynamo":
        out["saved_at_return"] = saved
    tier = backend.compiled[-1].tier if backend and backend.compiled else None
    if tier is not None:
        deadline = time.monotonic() + WAIT_S
        i = 0
        during = []
        while not tier.settled and time.monotonic() < deadline:
            i += 1
            start = time.perf_counter()
            got = forward(fn, batches[i % len(batches)])
            during.append(time.perf_counter() - start)
            time.sleep(during[-1] * (1 / BUSY - 1))
            err = max(err, (got - refs[i % len(batches)]).abs().max().item())
        if during:
            out["ms_during"] = f"{statistics.median(during) * 1e3:.2f}"
        timeline = tier.timeline()
        out["forwards_during"] = i
        out["last_swap_s"] = tier.started - t0 + (timeline["last_swap_at"] or 0.0)
        if not tier.settled:  # still compiling after WAIT_S
            out["last_swap_s"] = f"> {time.perf_counter() - t0:.0f}"
        out["uncompiled"] = timeline["uncompiled"]
    for i, args in enumerate(batches):
        err = max(err, (forward(fn, args) - refs[i]).abs().max().item())
    times = []
    for _ in range(50):
        start = time.perf_counter()
        forward(fn, batches[0])
        times.append(time.perf_counter() - start)
    out["ms_per_forward"] = statistics.median(times) * 1e3
    out["max_err"] = err
    out["warm"] = bool(backend and backend.compiled and backend.compiled[-1].warm)
    return out


def start_as(run: str) -> None:
    """The environment of run ``spawned`` (spawned workers) or ``equals``."""
    if run == "spawned":
        os.environ["STITCH_COMPILE_START"] = "spawn"
    if run == "equals":
        os.environ["STITCH_SERVING_FIRST"] = "0"


def aot_example(model: Any, args: Any, config: Any) -> tuple[Any, bool]:
    """``aot_compile`` of the example, and whether its saved forward was on
    disk when it returned."""
    from stitch.runtime import aot_compile
    from stitch.runtime.store.location import AOT_RECORD_FILE

    compiled = aot_compile(model, args, config, dynamic_dims={0: [0], 1: [0]})
    path = compiled.path
    return compiled, bool(path and os.path.exists(os.path.join(path, AOT_RECORD_FILE)))


def engine_child(run: str, layers: int, cache: str) -> dict[str, Any]:
    import torch
    from transformers import ContinuousBatchingConfig

    from stitch.runtime import CompilationConfig, StitchBackend
    from stitch.runtime.cli.engine_job import (
        LLAMA,
        Workload,
        build_model,
        engine_fields,
        finished,
        greedy,
        prompts,
    )
    from stitch.runtime.cli.engine_job import MODELS as SHAPES
    from stitch.runtime.hf import continuous_batching_config
    from stitch.runtime.hf.engine_compat import config_fields

    # layers 0: the model of docs/transformers.md, else LLAMA's shape.
    SHAPES["bench"] = (
        README_LLAMA if layers == 0 else dict(LLAMA, num_hidden_layers=layers)
    )
    work = Workload(prompts=8, shortest=1, longest=61, new_tokens=16, shape="bench")
    model = build_model(work)
    batch = prompts(work)
    fields = engine_fields(work)
    backend = None
    if run == "eager":
        config = ContinuousBatchingConfig(
            **config_fields(
                dict(
                    fields,
                    default_compile_level=0,
                    max_blocks_per_request=0,
                    auto_switch_to_flash=False,
                )
            )
        )
    else:
        options = {"backend": "eager"} if run == "dynamo" else {}
        start_as(run)
        tiered = run in ("tiered", "spawned", "equals")
        backend = StitchBackend(
            CompilationConfig(cache_dir=cache, tiered_start=tiered, **options)
        )
        config = continuous_batching_config(model, backend, **fields)
    with torch.no_grad():

        def generate(requests: list[list[int]], new: int) -> list[Any]:
            outputs = model.generate_batch(
                requests, greedy(new), continuous_batching_config=config
            )
            return finished(outputs, run, len(requests))

        generate([batch[0][:16]], 1)
        first = time.perf_counter() - STARTED
        results = generate(batch, work.new_tokens)
        tokens = [
            o.generated_tokens for o in sorted(results, key=lambda o: o.prompt_ids)
        ]
        out: dict[str, Any] = {"first_s": first, "tokens": tokens}
        tiers: list[Any] = []
        if backend is not None:
            # NOTE: [the engine serves while Dynamo traces]: requests until the
            # trace is done, then until every piece is swapped in.
            deadline = time.monotonic() + WAIT_S
            while model.forward.compiling() and time.monotonic() < deadline:
                generate([batch[1]], 2)
            assert model.forward.steps  # waits for the trace (raising its error)
            tiers = [c.tier for c in backend.compiled if c.tier is not None]
        if tiers:
            while not all(t.settled for t in tiers) and time.monotonic() < deadline:
                generate([batch[1]], 2)
            out["last_swap_s"] = max(
                t.started - STARTED + (t.timeline()["last_swap_at"] or 0.0)
                for t in tiers
            )
            if not all(t.settled for t in tiers):
                out["last_swap_s"] = f"> {time.perf_counter() - STARTED:.0f}"
            out["uncompiled"] = {
                k: v for t in tiers for k, v in t.timeline()["uncompiled"].items()
            }
        start = time.perf_counter()
        again = generate(batch, work.new_tokens)
        seconds = time.perf_counter() - start
        out["tokens_after"] = [
            o.generated_tokens for o in sorted(again, key=lambda o: o.prompt_ids)
        ]
        out["ms_per_token"] = 1e3 * seconds / sum(len(t) for t in out["tokens_after"])
    return out


def run_child(kind: str, run: str, layers: int, cache: str) -> dict[str, Any]:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=os.path.join(cache, "inductor"))
    command = [sys.executable, __file__, "--child", kind, run, str(layers), cache]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} {run}: {done.stdout[-2000:]}{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT) :])


def subject_rows(
    kind: str, layers: int, only: list[str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    runs = ["dynamo", "cold", "tiered", "equals", "spawned", "warm"]
    if kind == "aot":
        runs = ["dynamo", "cold", "tiered", "warm"]
    if kind == "engine":
        runs = ["eager", *runs]
    if only:
        runs = [r for r in runs if r in only or r in ("eager", "dynamo", "cold")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="stitch-cold-") as root:
        for run in runs:
            cache = os.path.join(root, "tiered" if run in ("tiered", "warm") else run)
            os.makedirs(cache, exist_ok=True)
            print(f"  {kind} {layers} layers: {run} ...", file=sys.stderr, flush=True)
            rows.append(
                (
                    run,
                    run_child(kind, "tiered" if run == "warm" else run, layers, cache),
                )
            )
    return rows


def table(kind: str, layers: int, rows: list[tuple[str, dict[str, Any]]]) -> str:
    from stitch.runtime.tables import markdown_table

    by = dict(rows)
    cells = []
    for run, r in rows:
        if kind != "engine":
            check = f"{r['max_err']:.1e}"
            speed = f"{r['ms_per_forward']:.2f}"
        else:
            eager = by["eager"]
            same = (
                r["tokens"] == eager["tokens"] and r["tokens_after"] == eager["tokens"]
            )
            check = "= eager" if same else "DIFFER"
            speed = f"{r['ms_per_token']:.2f}"
        last = r.get("last_swap_s")
        cells.append(
            (
                run,
                f"{r['first_s']:.2f}",
                (
                    "-"
                    if last is None
                    else last if isinstance(last, str) else f"{last:.2f}"
                ),
                *(() if kind == "engine" else (f"{r.get('ms_during', '-')}",)),
                speed,
                check,
                ", ".join(sorted(r.get("uncompiled") or {})) or "-",
            )
        )
    what = "ms/forward" if kind != "engine" else "ms/token"
    check = "max err" if kind != "engine" else "tokens"
    during = () if kind == "engine" else ("during (ms/forward)",)
    headers = ("run", "first output (s)", "last swap (s)", *during, what)
    headers += (check, "uncompiled")
    title = (
        f"example llama, {layers} layers, 8 tokens"
        + (", through aot_compile" if kind == "aot" else "")
        if kind != "engine"
        else "transformers' engine, "
        + (
            "docs/transformers.md's Llama (2 layers x 64)"
            if layers == 0
            else f"Llama {layers} layers x 256"
        )
        + " (8 prompts of 1-61 tokens, 16 new tokens)"
    )
    align = "lrrrrl" if kind == "engine" else "lrrrrrl"
    if kind != "engine" and float(os.environ.get("COLD_START_BUSY", "1")) != 1:
        title += (
            f", serving busy {float(os.environ['COLD_START_BUSY']):.0%} of the time"
        )
    lines = [title, "", markdown_table(headers, cells, align=align), ""]
    for run in [r for r in ("tiered", "equals", "spawned") if r in by]:
        lines += targets(
            by, run, what, "ms_per_forward" if kind != "engine" else "ms_per_token"
        )
    if kind == "aot":
        lines += [
            f"{run}: saved forward on disk when aot_compile returned: "
            + ("yes" if by[run]["saved_at_return"] else "no")
            for run in ("cold", "tiered")
        ]
    if "warm" in by:
        lines.append(f"warm start {by['warm']['first_s']:.2f} s")
    return "\n".join(lines)


def targets(by: dict[str, Any], run: str, what: str, key: str) -> list[str]:
    """The issue's three targets for the tiered run ``run``, met or missed."""
    dyn, cold, tiered = by["dynamo"], by["cold"], by[run]
    first = tiered["first_s"] - dyn["first_s"]
    swap = tiered.get("last_swap_s", 0)
    last = (swap if isinstance(swap, float) else float("inf")) / cold["first_s"]
    ratio = tiered[key] / cold[key]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return [
        f"{run}: first output {first:+.2f} s from Dynamo alone (<= 1.5 s: "
        f"{verdict(first <= 1.5)}); last swap {last:.2f}x the cold compile's first "
        f"output (<= 1.3x: {verdict(last <= 1.3)}); after the last swap "
        f"{ratio:.3f}x the cold run's {what} (<= 1.05x: {verdict(ratio <= 1.05)})"
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("KIND", "RUN", "LAYERS", "CACHE"))
    parser.add_argument(
        "--quick", action="store_true", help="the 3-layer example alone"
    )
    parser.add_argument(
        "--aot",
        action="store_true",
        help="also the 3-layer example through aot_compile",
    )
    parser.add_argument(
        "--no-engine", action="store_true", help="leave transformers' engine out"
    )
    parser.add_argument("--layers", type=int, nargs="*", default=[3, 32])
    parser.add_argument(
        "--engine-layers",
        type=int,
        nargs="*",
        default=[0, 4],
        help="0: the README's model",
    )
    parser.add_argument(
        "--runs",
        type=lambda text: text.split(","),
        help="these runs only (besides dynamo and cold), e.g. tiered,equals",
    )
    parser.add_argument(
        "--busy",
        type=float,
        default=BUSY,
        help="the share of the time the serving loop is busy during the swaps "
        "(1: forwards back to back)",
    )
    args = parser.parse_args()
    os.environ["COLD_START_BUSY"] = str(args.busy)
    if args.child:
        kind, run, layers, cache = args.child
        if kind == "engine":
            result = engine_child(run, int(layers), cache)
        else:
            result = example_child(run, int(layers), cache, aot=kind == "aot")
        print(RESULT + json.dumps(result), flush=True)
        return 0
    import torch

    subjects = [("example", n) for n in ([3] if args.quick else args.layers)]
    if args.aot:
        subjects.append(("aot", 3))
    if not args.quick and not args.no_engine:
        subjects += [("engine", n) for n in args.engine_layers]
    print(
        f"machine: {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    for kind, layers in subjects:
        rows = subject_rows(kind, layers, args.runs)
        print(table(kind, layers, rows), "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
