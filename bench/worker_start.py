"""A spawned pool's workers, started fresh or forked by a fork server, side by side.

Usage::

    python bench/worker_start.py                 # pools of 1, 2 and 4, CPU graphs
    python bench/worker_start.py --counts 4 --device cuda

Issue 76, part 3 (NOTE: [a fork server for compile workers] in
runtime/workers/fork_server.py).  Every row is a fresh process that makes a
``SpawnedPool`` of ``count`` workers, as a tiered start's pool does with
``$STITCH_COMPILE_START=spawn`` (the spawn path, forced), and times:

- ``ready``: from ``start`` until every pre-started worker is ready
  (imports done, the ISA probe on the CPU);
- ``cpu``: the machine's CPU seconds over that time (from /proc/stat: run it
  on a quiet machine);
- ``one more``: a worker taken when none is idle (a later graph, a worker
  replaced): from ``take`` until it is ready;

``fresh`` is ``$STITCH_FORK_SERVER=0`` (a fresh interpreter per worker);
``server`` forks each from the pool's fork server.  Runs alternate, fresh
then server, ``--repeats`` times; the table gives medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

RESULT = "WORKER_START_RESULT "


def machine_cpu_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # less idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def child(count: int, device: str) -> dict[str, float]:
    from stitch.runtime.pipeline.tiered.pool_choice import WORKER_MODULE
    from stitch.runtime.workers.spawned_pool import SpawnedPool

    pool = SpawnedPool(count, module=WORKER_MODULE)
    cpu0, t0 = machine_cpu_s(), time.perf_counter()
    pool.start(cpu=device == "cpu")
    assert pool.wait_ready(600), "the pool's workers were not ready in 600 s"
    out = {"ready": time.perf_counter() - t0, "cpu": machine_cpu_s() - cpu0}
    taken = [pool.take() for _ in range(count)]
    t1 = time.perf_counter()
    extra = pool.take()  # none idle
    assert extra.ready.wait(600), "the extra worker was not ready in 600 s"
    out["one_more"] = time.perf_counter() - t1
    for worker in (*taken, extra):
        pool.give_back(worker)
    pool.close()
    return out


def run(count: int, device: str, mode: str) -> dict[str, float]:
    env = dict(os.environ, STITCH_COMPILE_START="spawn")
    env["STITCH_FORK_SERVER"] = "0" if mode == "fresh" else "1"
    command = [sys.executable, __file__, "--child", str(count), device]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} {count}: {done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT) :])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2, metavar=("COUNT", "DEVICE"))
    parser.add_argument("--counts", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        out = child(int(args.child[0]), args.child[1])
        print(RESULT + json.dumps(out), flush=True)
        return
    from stitch.runtime.tables import markdown_table

    rows = []
    for count in args.counts:
        runs: dict[str, list[dict[str, float]]] = {"fresh": [], "server": []}
        for _ in range(args.repeats):
            for mode in runs:
                runs[mode].append(run(count, args.device, mode))
                print(count, mode, runs[mode][-1], file=sys.stderr, flush=True)
        for mode, results in runs.items():
            med = {k: statistics.median(r[k] for r in results) for k in results[0]}
            rows.append(
                (
                    count,
                    mode,
                    f"{med['ready']:.2f}",
                    f"{med['cpu']:.1f}",
                    f"{med['one_more']:.2f}",
                )
            )
    headers = ("workers", "start", "ready s", "cpu s", "one more s")
    print(markdown_table(headers, rows, align="rlrrr"))


if __name__ == "__main__":
    main()
