"""Cold versus warm start of a Stitch-compiled model, each in a fresh process.

Run: ``python bench/warm_start.py [--layers 32] [--repeats 3] [--profile]``.

A llama-like decoder (hidden 64 by default, so Inductor's work per piece is
small and the fixed costs show) is compiled and called once, in a new Python
process per measurement.  Two ways of compiling:

``dynamo``  ``torch.compile(model, backend=StitchBackend(...))``: every process
            traces the model with Dynamo; the Stitch cache covers the backend call.
``aot``     ``stitch.runtime.aot_compile(model, inputs, config)``: the first
            process traces and saves the forward; later ones load it without
            Dynamo or Inductor (see docs/performance.md).

and these settings (``Inductor cache`` is ``TORCHINDUCTOR_CACHE_DIR``):

``true cold``                 empty Stitch cache, empty Inductor cache.
``warm Inductor``             empty Stitch cache, the Inductor cache the true-cold run filled.
``warm, Inductor kept``       the Stitch cache from the runs above, Inductor's cache kept.
``warm, Inductor empty``      the Stitch cache from the runs above, Inductor's cache empty
                              (a fresh container with the Stitch cache shipped to it).

Per run it reports the time from after ``import torch`` to the first result
(importing Stitch, building the model, compiling or loading, the first forward),
the first forward alone (compile/load + call), what ``import torch`` took, the
Inductor compiles, the pieces loaded prebuilt, and which of Dynamo, Inductor,
black and jinja2 the process imported; medians over fresh processes, with
ratios to true cold, and where the AOT warm start's time goes.
``--profile`` runs one more AOT warm start under cProfile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

# (label, mode, stitch cache, Inductor cache): caches are "fresh" (emptied
# first), "kept" (left by the runs before) or "empty" (a new, empty folder).
SETTINGS = (
    ("true cold", "dynamo", "fresh", "fresh"),
    ("warm Inductor", "dynamo", "fresh", "kept"),
    ("warm, Inductor kept", "dynamo", "kept", "kept"),
    ("warm, Inductor empty", "dynamo", "kept", "empty"),
    ("true cold", "aot", "fresh", "fresh"),
    ("warm, Inductor kept", "aot", "kept", "kept"),
    ("warm, Inductor empty", "aot", "kept", "empty"),
)


# Modules whose import the report shows: the compilers and the code generator.
WATCHED = ("torch._dynamo", "torch._inductor", "black", "jinja2")


# -- the child: one compile in a fresh process -------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    import torch

    after_torch = time.perf_counter()
    from stitch.runtime import (
        CompilationConfig,
        StitchBackend,
        aot_compile,
        compilation_counter,
    )
    from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs

    after_stitch = time.perf_counter()
    cfg = LlamaConfig(num_layers=spec["layers"], hidden_size=spec["hidden"])
    model = build_llama(cfg)
    after_model = time.perf_counter()
    config = CompilationConfig(cache_dir=spec["cache_dir"], **spec["config"])
    ids, pos = llama_inputs(cfg, spec["tokens"])
    before = compilation_counter.snapshot()
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    with torch.no_grad():
        start = time.perf_counter()
        if spec["mode"] == "aot":
            compiled: Any = aot_compile(
                model, (ids, pos), config, dynamic_dims={0: [0], 1: [0]}
            )
            warm = compiled.warm
        else:
            backend = StitchBackend(config)
            compiled = torch.compile(model, backend=backend, fullgraph=True)
            torch._dynamo.mark_dynamic(ids, 0)
            torch._dynamo.mark_dynamic(pos, 0)
        loaded = time.perf_counter()
        compiled(ids, pos)
        end = time.perf_counter()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(spec["profile"])
    after = compilation_counter.snapshot()
    if spec["mode"] != "aot":
        warm = backend.compiled[0].warm
    imported = sorted(m for m in WATCHED if m in sys.modules)
    with torch.no_grad():
        model.reset_kv_caches()
        out = compiled(ids, pos)
        model.reset_kv_caches()
        ref = model(ids, pos)
    deltas = {k: after[k] - before[k] for k in after}
    return {
        "import_s": after_torch - started,
        "ready_s": end - after_torch,
        "first_forward_s": end - start,
        # The parts of ready_s, in order.
        "parts": {
            "import stitch.runtime": after_stitch - after_torch,
            "build the model": after_model - after_stitch,
            "inputs, config": start - after_model,
            "compile or load (aot_compile)": loaded - start,
            "first call": end - loaded,
        },
        "warm": warm,
        "imported": imported,
        "inductor_compiles": deltas["num_inductor_compiles"],
        "prebuilt_loads": deltas["num_prebuilt_loads"],
        "max_abs_diff": (out - ref).abs().max().item(),
    }


# -- the parent --------------------------------------------------------------------------


def run_child(spec: dict[str, Any], inductor_dir: str) -> dict[str, Any]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": inductor_dir}
    if spec.get("threads"):
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or len(lines) != 1:
        raise SystemExit(
            f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
        )
    return json.loads(lines[0][len("RESULT ") :])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


def one_repeat(
    base: dict[str, Any], scratch: str, r: int
) -> dict[tuple[str, str], dict[str, Any]]:
    results = {}
    for label, mode, stitch_state, inductor_state in SETTINGS:
        stitch = os.path.join(scratch, f"stitch-{mode}{r}")
        inductor = os.path.join(scratch, f"inductor-{mode}{r}")
        if stitch_state == "fresh":
            shutil.rmtree(stitch, ignore_errors=True)
        if inductor_state == "fresh":
            shutil.rmtree(inductor, ignore_errors=True)
        elif inductor_state == "empty":
            inductor = tempfile.mkdtemp(prefix="inductor-empty-", dir=scratch)
        results[(mode, label)] = run_child(
            {**base, "mode": mode, "cache_dir": stitch}, inductor
        )
        if inductor_state == "empty":
            shutil.rmtree(inductor, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument(
        "--tokens", type=int, default=8, help="batch size of the first call"
    )
    parser.add_argument("--compile-sizes", type=int, nargs="*", default=[4])
    parser.add_argument("--split-points", type=int, nargs="*", default=[16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS for every child (0: inherit); kernels are built for it",
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile one AOT warm start"
    )
    parser.add_argument(
        "--top", type=int, default=25, help="rows of the profile to print"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))))
        return

    base = {
        "layers": args.layers,
        "hidden": args.hidden,
        "tokens": args.tokens,
        "threads": args.threads,
        "config": {
            "compile_sizes": args.compile_sizes,
            "compile_ranges_split_points": args.split_points,
            "max_num_batched_tokens": args.max_tokens,
        },
    }
    start_load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    scratch = tempfile.mkdtemp(prefix="stitch-warm-start-")
    runs: list[dict[tuple[str, str], dict[str, Any]]] = []
    try:
        for r in range(args.repeats):
            runs.append(one_repeat(base, scratch, r))
            print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
        profile_path = None
        if args.profile:
            profile_path = os.path.join(scratch, "warm.prof")
            empty = tempfile.mkdtemp(prefix="inductor-empty-", dir=scratch)
            spec = {
                **base,
                "mode": "aot",
                "cache_dir": os.path.join(scratch, "stitch-aot0"),
            }
            run_child({**spec, "profile": profile_path}, empty)
        report(args, runs, start_load)
        if profile_path:
            print_profile(profile_path, args.top)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def report(
    args: argparse.Namespace,
    runs: list[dict[tuple[str, str], dict[str, Any]]],
    start_load: str,
) -> None:
    # NOTE: [the table helper in the parent only]
    # Imported here: a child process runs this file too, and importing Stitch
    # at its top would move Stitch's import before the clock that measures it.
    from stitch.runtime.tables import markdown_table

    def med(key: tuple[str, str], field: str) -> float:
        return statistics.median(r[key][field] for r in runs)

    print(
        f"\n{args.layers}-layer llama-like model, hidden {args.hidden}, first call "
        f"{args.tokens} tokens; compile sizes {args.compile_sizes}, split points "
        f"{args.split_points}, max {args.max_tokens}; "
        f"{'OMP_NUM_THREADS=' + str(args.threads) if args.threads else 'default threads'}; "
        f"median of {args.repeats} fresh processes each\n"
    )
    cold = med(("dynamo", "true cold"), "ready_s")
    rows = []
    for label, mode, _, _ in SETTINGS:
        key = (mode, label)
        runs_of = [r[key] for r in runs]
        rows.append(
            (
                mode,
                label,
                f"{med(key, 'ready_s'):.3f}",
                f"{med(key, 'first_forward_s'):.3f}",
                f"{med(key, 'import_s'):.2f}",
                "/".join(map(str, sorted({r["inductor_compiles"] for r in runs_of}))),
                "/".join(map(str, sorted({r["prebuilt_loads"] for r in runs_of}))),
                "/".join(sorted({"+".join(r["imported"]) or "none" for r in runs_of})),
                f"{med(key, 'ready_s') / cold:.3f}",
            )
        )
    headers = ["path", "start", "after import torch s", "first forward s"]
    headers += ["import torch s", "Inductor compiles", "prebuilt loads", "imports"]
    headers += ["after import / true cold"]
    print(markdown_table(headers, rows, align="llrrrrrlr"))
    warm = ("aot", "warm, Inductor empty")
    ready = med(warm, "ready_s")
    print(
        f"\nAOT warm start, Inductor's cache empty: every run warm="
        f"{all(r[warm]['warm'] for r in runs)}; {ready:.3f} s after import torch = "
        f"{100 * ready / cold:.1f}% of the true cold start ({cold:.1f} s); "
        f"first forward {med(warm, 'first_forward_s'):.3f} s "
        "(targets: <= 5% of true cold, <= 1.5 s after import torch)"
    )
    print("\nwhere its time goes (medians, s):\n")
    parts = [
        (part, f"{statistics.median(r[warm]['parts'][part] for r in runs):.3f}")
        for part in runs[0][warm]["parts"]
    ]
    print(markdown_table(("part", "s"), parts, align="lr"))
    worst = max(r[key]["max_abs_diff"] for r in runs for key in r)
    print(f"\nmax |compiled - eager| over all runs: {worst:.2e}")
    print(f"machine: {machine()}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min) at the start: {start_load}; at the end: {load}")


def print_profile(path: str, top: int) -> None:
    import pstats

    print(f"\ncProfile of one AOT warm start (aot_compile + first forward), top {top}:")
    stats = pstats.Stats(path)
    stats.sort_stats("cumulative").print_stats(top)


if __name__ == "__main__":
    main()
