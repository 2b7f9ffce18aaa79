"""Cold versus warm start of the Stitch backend, each in a fresh process.

Run: ``python bench/warm_start.py [--layers 32] [--repeats 3] [--profile]``.

A llama-like decoder (hidden 64 by default, so Inductor's work per piece is
small and the fixed costs show) is compiled with ``torch.compile(model,
backend=StitchBackend(...))`` and called once, in a new Python process per
measurement, in three settings:

``true cold``    an empty Stitch cache and an empty ``TORCHINDUCTOR_CACHE_DIR``:
                 everything is compiled, C++ kernels included.
``warm Inductor`` an empty Stitch cache, but the Inductor cache the true-cold run
                 filled: Stitch compiles every piece, Inductor mostly hits.
``warm start``   the Stitch cache from the runs above: every piece is loaded from
                 its saved artifact, the stitching source is read back and
                 verified, nothing is compiled.
``warm start, no ISA probe``  the same with ``TORCHINDUCTOR_VEC_ISA_OK=1``, which
                 skips Inductor's once-per-process probe of the CPU's vector
                 ISA (a fixed cost the profile shows; a deployment knob).

Per run it reports the backend call (``be.compiled[0].seconds``, what Stitch itself
spends), the first forward (wall time of the first call: Dynamo tracing + backend
+ running), the Inductor compiles and the cache hits, and prints the medians with
ratios to true cold.  ``--profile`` runs one more warm start under cProfile and
prints where its backend call spends its time.
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

SETTINGS = ("true cold", "warm Inductor", "warm start", "warm start, no ISA probe")
# Inductor probes the CPU's vector ISA once per process by dlopen-ing a test
# library in child processes; this variable tells it the ISA works instead.
NO_ISA_PROBE = {"TORCHINDUCTOR_VEC_ISA_OK": "1"}


# -- the child: one compile in a fresh process -----------------------------------------


def _profiled_backend() -> type:
    import cProfile

    from stitch.runtime import StitchBackend

    class Profiled(StitchBackend):
        """Profiles the backend call only (not Dynamo's tracing around it)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.profiler = cProfile.Profile()

        def __call__(self, gm: Any, example_inputs: Any) -> Any:
            self.profiler.enable()
            try:
                return super().__call__(gm, example_inputs)
            finally:
                self.profiler.disable()

    return Profiled


def child(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    import torch

    from stitch.runtime import CompilationConfig, StitchBackend, compilation_counter
    from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs

    imported = time.perf_counter() - started
    _Profiled = _profiled_backend()
    cfg = LlamaConfig(num_layers=spec["layers"], hidden_size=spec["hidden"])
    model = build_llama(cfg)
    config = CompilationConfig(cache_dir=spec["cache_dir"], **spec["config"])
    backend = _Profiled(config) if spec.get("profile") else StitchBackend(config)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    ids, pos = llama_inputs(cfg, spec["tokens"])
    torch._dynamo.mark_dynamic(ids, 0)
    torch._dynamo.mark_dynamic(pos, 0)

    before = compilation_counter.snapshot()
    with torch.no_grad():
        start = time.perf_counter()
        compiled(ids, pos)
        first = time.perf_counter() - start
    after = compilation_counter.snapshot()
    if spec.get("profile"):
        backend.profiler.dump_stats(spec["profile"])
    model.reset_kv_caches()
    with torch.no_grad():
        out = compiled(ids, pos)
        model.reset_kv_caches()
        ref = model(ids, pos)
    deltas = {k: after[k] - before[k] for k in after}
    (result,) = backend.compiled
    return {
        "import_s": imported,
        "backend_s": result.seconds,
        "first_forward_s": first,
        "warm": result.warm,
        "inductor_compiles": deltas["num_inductor_compiles"],
        "cache_hits": deltas["num_cache_hits"],
        "max_abs_diff": (out - ref).abs().max().item(),
    }


# -- the parent --------------------------------------------------------------------------


def run_child(
    spec: dict[str, Any], inductor_dir: str, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": inductor_dir, **(extra_env or {})}
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
        "--profile", action="store_true", help="cProfile one warm start"
    )
    parser.add_argument(
        "--top", type=int, default=25, help="rows of the profile to print"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))))
        return

    config = {
        "compile_sizes": args.compile_sizes,
        "compile_ranges_split_points": args.split_points,
        "max_num_batched_tokens": args.max_tokens,
    }
    base = {
        "layers": args.layers,
        "hidden": args.hidden,
        "tokens": args.tokens,
        "config": config,
    }
    scratch = tempfile.mkdtemp(prefix="stitch-warm-start-")
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
    try:
        for r in range(args.repeats):
            inductor = os.path.join(scratch, f"inductor{r}")
            stitch = os.path.join(scratch, f"stitch{r}")
            spec = {**base, "cache_dir": stitch}
            results["true cold"].append(run_child(spec, inductor))
            shutil.rmtree(stitch)
            results["warm Inductor"].append(run_child(spec, inductor))
            results["warm start"].append(run_child(spec, inductor))
            results["warm start, no ISA probe"].append(
                run_child(spec, inductor, NO_ISA_PROBE)
            )
            print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
        profile_path = None
        if args.profile:
            profile_path = os.path.join(scratch, "warm.prof")
            run_child({**spec, "profile": profile_path}, inductor)
        report(args, results)
        if profile_path:
            print_profile(profile_path, args.top)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def report(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> None:
    def med(setting: str, key: str) -> float:
        return statistics.median(r[key] for r in results[setting])

    targets = len(args.compile_sizes) + (
        len(args.split_points) + 1 if args.split_points else 0
    )
    print(
        f"\n{args.layers}-layer llama-like model, hidden {args.hidden}, first call "
        f"{args.tokens} tokens; compile sizes {args.compile_sizes}, split points "
        f"{args.split_points}, max {args.max_tokens} (general + {targets} targets per "
        f"piece); median of {args.repeats} fresh processes each\n"
    )
    print(
        "| start | backend call s | first forward s | Inductor compiles "
        "| cache hits | backend / true cold | first fwd / true cold |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    cold_backend = med("true cold", "backend_s")
    cold_first = med("true cold", "first_forward_s")
    for setting in SETTINGS:
        rows = results[setting]
        compiles = sorted({r["inductor_compiles"] for r in rows})
        hits = sorted({r["cache_hits"] for r in rows})
        print(
            f"| {setting} | {med(setting, 'backend_s'):.3f} | "
            f"{med(setting, 'first_forward_s'):.3f} | "
            f"{'/'.join(map(str, compiles))} | {'/'.join(map(str, hits))} | "
            f"{med(setting, 'backend_s') / cold_backend:.3f} | "
            f"{med(setting, 'first_forward_s') / cold_first:.3f} |"
        )
    warm_backend = med("warm start", "backend_s")
    print(
        f"\nwarm start: every run warm={all(r['warm'] for r in results['warm start'])}; "
        f"backend call {warm_backend:.3f} s = {100 * warm_backend / cold_backend:.1f}% of "
        f"true cold, {100 * warm_backend / med('warm Inductor', 'backend_s'):.1f}% of warm "
        "Inductor (targets: <= 10% of cold, < 1 s)"
    )
    worst = max(r["max_abs_diff"] for rows in results.values() for r in rows)
    print(f"max |compiled - eager| over all runs: {worst:.2e}")
    print(f"import torch + stitch in the child: {med('warm start', 'import_s'):.2f} s")
    print(f"machine: {machine()}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end (1, 5, 15 min): {load}")


def print_profile(path: str, top: int) -> None:
    import pstats

    print(f"\ncProfile of one warm-start backend call, top {top} by cumulative time:")
    stats = pstats.Stats(path)
    stats.sort_stats("cumulative").print_stats(top)
    print(f"top {top} by own time:")
    stats.sort_stats("tottime").print_stats(top)


if __name__ == "__main__":
    main()
