"""Where a spawned compile worker's start goes, phase by phase.

Usage::

    python bench/worker_phases.py --count 3 --device cuda

Starts ``--count`` fresh interpreters at once, as a tiered start's pool
does (NOTE: [pre-started compile workers] in
runtime/workers/spawned_pool.py), and has each run the steps of
``spawned_workers.main`` before it says it is ready, timed one by one:

- ``interpreter``: from the launch until the script's first line runs;
- ``torch``: ``import torch``;
- ``stitch``: ``import stitch.runtime`` and the example models (the modules
  the pool preloads);
- ``inductor``: Inductor's import, and on the CPU the vector ISA probe
  (``start_inductor_warmup``, ``inductor_ready`` and ``probe_done``; a
  worker reads its first job before the probe ends, and says it is ready
  after);
- ``pools``: ``warm_compile_pools``;
- ``pool ready``: until Inductor's subprocess pool answers (a worker's first
  compile waits for it), which the ready signal does not wait for; a worker
  for the CPU starts none (NOTE: [no subprocess pool for C++ kernels]).

Prints one JSON object: each phase's median seconds over the processes, and
the median total to ready.  bench/tiered_start.py reports it beside the
workers' start-up on a GPU (issue 60: 15.9 s for three workers on an H200).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

PHASES = ("interpreter", "torch", "stitch", "inductor", "pools", "pool ready")

CHILD = """
import json, sys, time
marks = [float(sys.argv[1]), time.time()]
import torch
marks.append(time.time())
import stitch.runtime, stitch.runtime.examples.models
marks.append(time.time())
from stitch.runtime.pipeline.inductor_warmup import inductor_ready, probe_done, start_inductor_warmup
start_inductor_warmup(cpu=sys.argv[2] == "cpu")
inductor_ready()
probe_done()
marks.append(time.time())
from stitch.runtime.compat.inductor import warm_compile_pools
warm_compile_pools(triton=sys.argv[2] != "cpu")
marks.append(time.time())
from torch._inductor.async_compile import AsyncCompile
if sys.argv[2] != "cpu":
    AsyncCompile.wait_pool_ready()
marks.append(time.time())
print(json.dumps(marks), flush=True)
"""


def measure(count: int, device: str) -> dict[str, float]:
    """Each phase's median seconds over ``count`` workers started at once,
    each with a pool's worker's environment (its share of the build pools)."""
    from stitch.runtime.workers.pool_server import worker_env
    from stitch.runtime.workers.worker_cpus import cores

    launched = time.time()
    kind = "cpu" if device == "cpu" else "gpu"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, repr(launched), kind],
            stdout=subprocess.PIPE,
            text=True,
            env=worker_env(count, cores()),
        )
        for _ in range(max(count, 1))
    ]
    rows = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"a worker's start failed with {p.returncode}")
        marks = json.loads(out.strip().splitlines()[-1])
        rows.append([b - a for a, b in zip(marks, marks[1:], strict=False)])
    result = {
        phase: statistics.median(r[i] for r in rows) for i, phase in enumerate(PHASES)
    }
    result["ready"] = statistics.median(sum(r[:5]) for r in rows)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3, help="workers started at once")
    parser.add_argument("--device", default="cpu", help="cpu (ISA probe) or cuda")
    args = parser.parse_args()
    print(
        json.dumps(
            {k: round(v, 2) for k, v in measure(args.count, args.device).items()}
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
