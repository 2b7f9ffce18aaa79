"""The tiered start under PIECEWISE CUDA graphs, side by side: Dynamo alone, Stitch cold, tiered, equals, warm.

Usage::

    python bench/tiered_start.py --device cuda --out tiered.md   # 3 and 32 layers
    python bench/tiered_start.py --device cpu --layers 2         # a rehearsal on CPU

Issue 60's measurement of the tiered start on a GPU (docs/cold_start.md,
"Under CUDA graphs").  The example llama (stitch.runtime.examples, 8, 5, 3
and 7 tokens a forward, the token dimension marked dynamic,
``fullgraph=True``) at each ``--layers`` count; every run a fresh process
with empty Stitch, Inductor and Triton caches (but "warm", which starts from
the tiered run's entry), one after the other in one invocation:

- ``dynamo``: ``torch.compile(backend="eager")``, Dynamo alone;
- ``cold``: Stitch, every piece compiled before the first output;
- ``tiered``: ``CompilationConfig(tiered_start=True)`` with spawned compile
  workers (forced on a GPU; ``$STITCH_COMPILE_START=spawn`` here, so the CPU
  runs the same path);
- ``equals``: the same with serving first off (``$STITCH_SERVING_FIRST=0``:
  the workers as the serving threads' equals), its own empty caches;
- ``warm``: a start from the entry the tiered run's workers filled.

Stitch's runs use ``cudagraph_mode="PIECEWISE"`` (capture sizes 1, 2, 4, 8;
positions padded with -1).  On the CPU the graphs are emulated
(``EmulatedGraphOps``): the same capture, recapture and padding, no CUDA.

Figures: "first output", seconds (``perf_counter``) from ``torch.compile``
to the first forward's output; "last swap", the same clock at the tiered
run's last swap while forwards run back to back; "max err", the largest
difference from eager before (the first forward), during (until the last
swap) and after the swaps; "ms/forward", the median of 50 forwards of 8
tokens after 10 warm-ups (after the last swap for the tiered run), timed
with CUDA events on a GPU and ``perf_counter`` on the CPU.  The compile
workers' start-up, apart from their compile: as many workers as the tiered
run started, spawned at once by the serving process (after its last swap)
as a pool (``spawned_pool.SpawnedPool``), each timed from launch until it
says it is ready: the interpreter, torch, Stitch and Inductor's import, the
ISA probe (on the CPU) and Inductor's build pools; on a GPU, a fresh process's CUDA
context (which a worker makes at its first compile) is timed beside it; and
the same start phase by phase in as many fresh processes (bench/worker_phases.py).
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

RESULT = "STITCH_TIERED_START_RESULT "
RUNS = ("dynamo", "cold", "tiered", "equals", "warm")
SIZES = (8, 5, 3, 7)  # never 1: Dynamo compiles a graph of its own for it
CAPTURE_SIZES = [1, 2, 4, 8]
WARMUPS, TIMED = 10, 50
# "Equal to eager": the bound of the tests (INDUCTOR_TOL on the CPU, the CUDA
# tiered test's 1e-3 on a GPU, where Inductor's kernels reorder more).
TOLERANCE = {"cpu": 1e-4, "cuda": 1e-3}


def example_child(run: str, layers: int, cache: str, args: Any) -> dict[str, Any]:
    """One run in this process (a fresh one): the figures of the docstring."""
    import torch

    from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs

    device = args.device
    cfg = LlamaConfig(num_layers=layers)
    model = build_llama(cfg).to(device)  # the first CUDA call

    def batch(n: int) -> tuple[torch.Tensor, ...]:
        args = llama_inputs(cfg, n, seed=n, device=device)
        for a in args:
            torch._dynamo.mark_dynamic(a, 0)
        return args

    def forward(fn: Any, args: Any) -> torch.Tensor:
        model.reset_kv_caches()
        with torch.no_grad():
            return fn(*args)

    batches = [batch(n) for n in SIZES]
    refs = [forward(model, a).clone() for a in batches]

    def err(i: int) -> float:
        k = i % len(batches)
        return (forward(fn, batches[k]) - refs[k]).abs().max().item()

    t0 = time.perf_counter()
    fn, backend = compiled(model, run, cache, device)
    out: dict[str, Any] = {"err_before": err(0)}
    out["first_s"] = time.perf_counter() - t0
    tier = backend.compiled[-1].tier if backend and backend.compiled else None
    if tier is not None:
        out.update(serve_until_settled(tier, err, t0, args.settle_s))
    out["err_after"] = max(err(i) for i in range(2 * len(batches)))
    out["ms_per_forward"] = per_forward(fn, batches[0], device)
    out["err_after"] = max(out["err_after"], err(0))
    out["graphs"] = backend.cudagraphs.num_captured if backend else 0
    out["warm"] = bool(backend and backend.compiled and backend.compiled[-1].warm)
    if tier is not None and run == "tiered":  # once: "equals" starts the same
        out["workers"] = worker_startup(len(tier.pids), device)
    out["facts"] = facts(device)
    return out


def compiled(model: Any, run: str, cache: str, device: str) -> tuple[Any, Any]:
    """``torch.compile`` of ``model`` for ``run``, and its Stitch backend (None
    for Dynamo alone)."""
    import torch

    from stitch.runtime import CompilationConfig, StitchBackend
    from stitch.runtime.cudagraph import CUDAGraphManager, EmulatedGraphOps

    if run == "dynamo":
        return torch.compile(model, backend="eager", fullgraph=True), None
    config = CompilationConfig(
        cache_dir=cache,
        tiered_start=run in ("tiered", "equals"),
        cudagraph_mode="PIECEWISE",
        cudagraph_capture_sizes=CAPTURE_SIZES,
        cudagraph_pad_values={"positions": -1},
    )
    graphs = None
    if device == "cpu":
        graphs = CUDAGraphManager(config.cudagraphs, ops=EmulatedGraphOps())
    backend = StitchBackend(config, cudagraphs=graphs)
    return torch.compile(model, backend=backend, fullgraph=True), backend


def serve_until_settled(tier: Any, err: Any, t0: float, limit: float) -> dict[str, Any]:
    """Forwards back to back, each checked, until every piece is swapped in
    or given up (at most ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    worst, i = 0.0, 0
    while not tier.settled and time.monotonic() < deadline:
        i += 1
        worst = max(worst, err(i))
    timeline = tier.timeline()
    landed = timeline["compiled_at"].values()
    return {
        "err_during": worst,
        "forwards_during": i,
        "first_landing_s": tier.started - t0 + min(landed, default=float("nan")),
        "last_swap_s": tier.started - t0 + (timeline["last_swap_at"] or float("nan")),
        "uncompiled": timeline["uncompiled"],
        "settled": tier.settled,
    }


def per_forward(fn: Any, args: Any, device: str) -> float:
    """The median milliseconds of :data:`TIMED` forwards after :data:`WARMUPS`
    (CUDA events on a GPU; the KV cache writes are the same each time)."""
    import torch

    cuda = device.startswith("cuda")
    times = []
    with torch.no_grad():
        for i in range(WARMUPS + TIMED):
            if cuda:
                start, end = (torch.cuda.Event(enable_timing=True) for _ in "ab")
                start.record()
            t = time.perf_counter()
            fn(*args)
            if cuda:
                end.record()
                end.synchronize()
                ms = start.elapsed_time(end)
            else:
                ms = 1e3 * (time.perf_counter() - t)
            if i >= WARMUPS:
                times.append(ms)
    return statistics.median(times)


def worker_startup(count: int, device: str) -> dict[str, Any]:
    """The compile workers' start-up apart from their compile (see the
    docstring): a pool of ``count`` workers started at once, each until ready."""
    from stitch.runtime.pipeline.tiered.pool_choice import WORKER_MODULE
    from stitch.runtime.workers.spawned_pool import SpawnedPool

    count = max(count, 1)
    t0 = time.perf_counter()
    pool = SpawnedPool(
        count, preload=["stitch.runtime.examples.models"], module=WORKER_MODULE
    )
    pool.start(cpu=device == "cpu")
    workers = [pool.take() for _ in range(count)]
    seconds = []
    for w in workers:
        w.ready.wait()
        seconds.append(time.perf_counter() - t0)
        if not w.alive():
            raise RuntimeError(f"a compile worker exited with {w.process.returncode}")
    for w in workers:
        w.close()
    out = {"count": count, "ready_s": statistics.median(seconds), "max_s": max(seconds)}
    if device.startswith("cuda"):
        out["cuda_context_s"] = cuda_context(count)
    from worker_phases import measure  # bench/, beside this file

    out["phases"] = measure(count, device)
    return out


def cuda_context(count: int) -> float:
    """The median seconds ``count`` fresh processes, started at once, take to
    make a CUDA context (after importing torch)."""
    code = (
        "import time, torch; t = time.perf_counter(); torch.zeros(1, device='cuda'); "
        "torch.cuda.synchronize(); print(time.perf_counter() - t)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    return statistics.median(float(p.communicate()[0].split()[-1]) for p in procs)


def facts(device: str) -> dict[str, str]:
    import torch
    from machine_facts import machine_facts  # bench/, beside this file

    found = machine_facts(gpu=device.startswith("cuda"))
    found["cores"] = str(os.cpu_count())
    found["date"] = time.strftime("%Y-%m-%d %H:%M")
    found["float32 matmul"] = torch.get_float32_matmul_precision()
    return found


def run_child(run: str, layers: int, cache: str, args: Any) -> dict[str, Any]:
    """``run`` in a fresh process with Inductor's and Triton's caches in
    ``cache``; its result, or ``{"error": ...}``."""
    from stitch.runtime.harness.marked_result import marked_result

    env = dict(
        os.environ,
        TORCHINDUCTOR_CACHE_DIR=os.path.join(cache, "inductor"),
        TRITON_CACHE_DIR=os.path.join(cache, "triton"),
    )
    if run in ("tiered", "equals"):
        env["STITCH_COMPILE_START"] = "spawn"
    if run == "equals":  # the workers as the serving threads' equals
        env["STITCH_SERVING_FIRST"] = "0"
    child = "tiered" if run == "warm" else run
    command = [sys.executable, __file__, "--child", child, str(layers), cache]
    command += ["--device", args.device, "--settle-s", str(args.settle_s)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=args.child_timeout
        )
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {exc.timeout} s"}
    result = marked_result(done.stdout, RESULT)
    if done.returncode != 0 or result is None:
        return {"error": f"{done.stdout[-1500:]}{done.stderr[-2500:]}".strip()}
    return result


def subject(layers: int, args: Any) -> dict[str, dict[str, Any]]:
    """Every run of :data:`RUNS` at ``layers`` layers, in order."""
    rows = {}
    with tempfile.TemporaryDirectory(prefix="stitch-tiered-") as root:
        for run in args.runs.split(","):
            cache = os.path.join(root, "tiered" if run == "warm" else run)
            os.makedirs(cache, exist_ok=True)
            print(f"  {layers} layers: {run} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            rows[run] = run_child(run, layers, cache, args)
            rows[run]["wall_s"] = time.perf_counter() - started
    return rows


def fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return format(value, spec)


def runs_table(rows: dict[str, dict[str, Any]]) -> str:
    from stitch.runtime.tables import markdown_table

    cells = []
    for run, r in rows.items():
        if "error" in r:
            cells.append((run, *["failed"] * 7, fmt(r["wall_s"], ".0f")))
            continue
        errs = [r.get(f"err_{k}") for k in ("before", "during", "after")]
        cells.append(
            (
                run,
                fmt(r["first_s"]),
                fmt(r.get("last_swap_s")),
                fmt(r["ms_per_forward"], ".3f"),
                " / ".join(fmt(e, ".1e") for e in errs),
                str(r["graphs"]),
                str(r.get("forwards_during", "-")),
                ", ".join(sorted(r.get("uncompiled") or {})) or "-",
                fmt(r["wall_s"], ".0f"),
            )
        )
    headers = (
        "run",
        "first output (s)",
        "last swap (s)",
        "ms/forward",
        "max err before / during / after",
        "graphs",
        "forwards during",
        "uncompiled",
        "process (s)",
    )
    return markdown_table(headers, cells, align="lrrrlrrlr")


def targets(rows: dict[str, dict[str, Any]], device: str) -> str:
    """Issue 60's targets for the tiered run, each met or missed, and the
    workers' start-up (no target)."""
    from stitch.runtime.tables import markdown_table

    needed = ("dynamo", "cold", "tiered", "warm")
    if any("error" in rows.get(r, {"error": 1}) for r in needed):
        return "targets: not judged, a run failed or was not asked for"
    dyn, cold, tier, warm = (rows[r] for r in needed)
    tol = TOLERANCE["cuda" if device.startswith("cuda") else "cpu"]
    worst = max(tier.get(f"err_{k}", 0.0) or 0.0 for k in ("before", "during", "after"))
    first = tier["first_s"] - dyn["first_s"]
    last = tier.get("last_swap_s", float("nan")) / cold["first_s"]
    speed = tier["ms_per_forward"] / warm["ms_per_forward"]
    cells = [
        ("first output - Dynamo alone's", f"{first:+.2f} s", "<= 1.5 s", first <= 1.5),
        (
            "max err vs eager, every forward",
            f"{worst:.1e}",
            f"<= {tol:g}",
            worst <= tol,
        ),
        ("last swap / cold compile", f"{last:.2f}x", "<= 1.3x", last <= 1.3),
        (
            "ms/forward after the last swap / warm's",
            f"{speed:.3f}x",
            "<= 1.05x",
            speed <= 1.05,
        ),
    ]
    table = [
        (what, got, bound, "met" if ok else "MISSED") for what, got, bound, ok in cells
    ]
    w = tier.get("workers", {})
    if w:
        context = w.get("cuda_context_s")
        table.append(
            (
                f"{w['count']} workers' start-up (median / last)",
                f"{w['ready_s']:.2f} / {w['max_s']:.2f} s"
                + ("" if context is None else f" + CUDA context {context:.2f} s"),
                "-",
                "reported",
            )
        )
    if w.get("phases"):
        phases = ", ".join(f"{k} {v:.2f}" for k, v in w["phases"].items())
        table.append(
            ("a worker's start, phase by phase (median s)", phases, "-", "reported")
        )
    table.append(
        (
            "tiered: first piece landed",
            f"{fmt(tier.get('first_landing_s'))} s",
            "-",
            "reported",
        )
    )
    return markdown_table(("target", "figure", "bound", "verdict"), table, align="lrrl")


def report(layers: int, rows: dict[str, dict[str, Any]], device: str) -> str:
    lines = [
        f"### example llama, {layers} layers, {', '.join(map(str, SIZES))} tokens, "
        f"PIECEWISE (capture sizes {CAPTURE_SIZES}{', emulated' if device == 'cpu' else ''})",
        "",
        runs_table(rows),
        "",
        targets(rows, device),
    ]
    for run, r in rows.items():
        if "error" in r:
            lines += ["", f"{run} failed:", "", "```text", r["error"], "```"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cuda or cpu (emulated graphs)")
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 32])
    parser.add_argument("--out", help="also write the report to this file")
    parser.add_argument("--runs", default=",".join(RUNS), help="which runs, in order")
    parser.add_argument(
        "--child-timeout", type=float, default=300.0, help="seconds a run may take"
    )
    parser.add_argument(
        "--settle-s",
        type=float,
        default=240.0,
        help="seconds the tiered run serves while waiting for its last swap",
    )
    parser.add_argument("--child", nargs=3, metavar=("RUN", "LAYERS", "CACHE"))
    args = parser.parse_args()
    if args.child:
        run, layers, cache = args.child
        result = example_child(run, int(layers), cache, args)
        print(RESULT + json.dumps(result), flush=True)
        return 0
    sections, failed = [], False
    for layers in args.layers:
        rows = subject(layers, args)
        failed |= any("error" in r for r in rows.values())
        sections.append(report(layers, rows, args.device))
        print(sections[-1], "\n", flush=True)
    found = next(
        (r["facts"] for r in rows.values() if "facts" in r),
        {"device": "no run finished"},
    )
    machine = "machine: " + ", ".join(f"{k} {v}" for k, v in found.items())
    print(machine)
    if args.out:
        with open(args.out, "w") as f:
            f.write(
                "\n\n".join(
                    ["## The tiered start (bench/tiered_start.py)", machine, *sections]
                )
            )
            f.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
