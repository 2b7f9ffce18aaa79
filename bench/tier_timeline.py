"""Where a tiered start's time goes against a cold compile's, phase by phase.

Usage::

    python bench/tier_timeline.py                            # 32 layers, idle
    python bench/tier_timeline.py --layers 3 --load busy --rounds 2

Issue 75's question: what a tiered start (the CPU's default, workers forked)
adds before its last piece lands, against a cold compile
(``tiered_start=False``).  Each run is ``bench/under_load.py``'s child (the
example llama, ``dynamic=True``) in a fresh process with empty Stitch and
Inductor caches, a cold run then a forked one in each round.  The child
wraps, for timing only, the backend call's phases and, in whichever process
compiles (the cold call itself, or the forked worker), Inductor's import, the
ISA probe and each Inductor compile; each prints one ``TIMELINE`` line to
stderr, which a forked worker inherits.  Under ``--load idle`` nothing runs
until ``wait_compiled()`` returns; under ``busy`` forwards run back to back
until every piece has swapped in.

Prints one table per round, seconds after each run's backend call: when each
phase began and ended (a phase that ran more than once: its first start and
last end, and the count; each Inductor compile on a row of its own), then
when the last compile ended.  The cold run's
pieces compile inside its ``plan`` phase (``Compilation.compile_pieces``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

EVENT = "TIMELINE "
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # under_load, the child's model and environment
# What is timed: (module, attribute path, label).
TIMED = (
    ("stitch.runtime.pipeline.compilation", "Compilation.open", "open"),
    ("stitch.runtime.pipeline.compilation", "Compilation.split", "split"),
    ("stitch.runtime.pipeline.compilation", "Compilation.compile_pieces", "plan"),
    ("stitch.runtime.pipeline.compilation", "emit", "emit"),
    ("stitch.runtime.pipeline.compilation", "load_function", "load"),
    ("stitch.runtime.pipeline.tiered.compile_workers", "start_tier", "tier start"),
    ("stitch.runtime.compat.inductor", "import_inductor", "Inductor import"),
    ("stitch.runtime.compat.isa_probe", "probe_cpu_isa", "ISA probe"),
    ("stitch.runtime.pipeline.compilers", "InductorAdapter.compile", "compile"),
)
# The report's rows, in order; after them a row per Inductor compile
# ("compile 1", ...), as many as a run made.
ORDER = [label for _, _, label in TIMED[:6]] + ["first output"]
ORDER += [label for _, _, label in TIMED[6:8]]


def _say(label: str, start: float, end: float) -> None:
    line = json.dumps({"label": label, "pid": os.getpid(), "start": start, "end": end})
    os.write(2, (EVENT + line + "\n").encode())


def _timed(label: str, fn: Any) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _say(label, start, time.perf_counter())

    return timed


def child(layers: int, run: str, load: str) -> None:
    import importlib

    import under_load

    for module_name, path, label in TIMED:
        owner: Any = importlib.import_module(module_name)
        *outer, name = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        setattr(owner, name, _timed(label, getattr(owner, name)))
    work = under_load.Example(layers)
    start = time.perf_counter()
    fn, backend = under_load.compiled_fn(work.model, run)
    work.step(fn)
    _say("first output", start, time.perf_counter())
    tiers = [c.tier for c in backend.compiled if c.tier is not None]
    if tiers and load == "idle":
        from stitch.runtime import wait_compiled

        wait_compiled(under_load.WAIT_S)
    while tiers and not all(t.settled for t in tiers):
        work.step(fn)
    os._exit(0)  # the worker's lines are written; nothing else to wait for


def run_child(layers: int, run: str, load: str) -> list[dict[str, Any]]:
    from under_load import child_env

    with tempfile.TemporaryDirectory(prefix=f"timeline-{run}-") as cache:
        command = [sys.executable, __file__, "--child", str(layers), run, load]
        done = subprocess.run(
            command, capture_output=True, text=True, env=child_env(cache)
        )
    events = [
        json.loads(line[len(EVENT) :])
        for line in done.stderr.splitlines()
        if line.startswith(EVENT)
    ]
    if done.returncode != 0 or not any(e["label"] == "open" for e in events):
        raise RuntimeError(f"{run}: {done.stderr[-3000:]}")
    return events


def phases(events: list[dict[str, Any]]) -> dict[str, tuple[float, float, int]]:
    """Each label's first start, last end and count, from the backend call's
    start; Inductor's import only where it imported (later calls return at once)."""
    call = min(e["start"] for e in events if e["label"] == "open")
    out: dict[str, tuple[float, float, int]] = {}
    compiles = 0
    for e in sorted(events, key=lambda e: e["start"]):
        if e["label"] == "compile":  # each on a row of its own
            compiles += 1
            e = dict(e, label=f"compile {compiles}")
        if e["label"] == "Inductor import" and e["end"] - e["start"] < 0.05:
            continue
        start, end = e["start"] - call, e["end"] - call
        if e["label"] == "first output":
            start = end  # the output's time, not the compile's start
        if e["label"] in out:
            s, t, n = out[e["label"]]
            start, end, count = min(s, start), max(t, end), n + 1
        else:
            count = 1
        out[e["label"]] = (start, end, count)
    return out


def report(rounds: list[dict[str, dict[str, tuple[float, float, int]]]]) -> str:
    from stitch.runtime.tables import markdown_table

    lines = []
    for i, runs in enumerate(rounds, 1):
        rows = []
        compiles = max(sum("compile " in label for label in runs[r]) for r in runs)
        for label in ORDER + [f"compile {i}" for i in range(1, compiles + 1)]:
            if all(label not in runs[run] for run in ("cold", "forked")):
                continue  # a phase neither run had
            cells = []
            for run in ("cold", "forked"):
                got = runs[run].get(label)
                if got is None:
                    cells.append("-")
                elif label == "first output":
                    cells.append(f"{got[1]:.2f}")
                else:
                    count = f" (x{got[2]})" if got[2] > 1 else ""
                    cells.append(f"{got[0]:.2f} to {got[1]:.2f}{count}")
            rows.append((label, *cells))
        last = [
            max(end for label, (_, end, _) in runs[run].items() if "compile " in label)
            for run in ("cold", "forked")
        ]
        rows.append(("last compile ended", f"{last[0]:.2f}", f"{last[1]:.2f}"))
        lines += [
            f"round {i}, forked at {last[1] / last[0]:.2f}x the cold run's last compile",
            "",
        ]
        lines += [markdown_table(("phase", "cold", "forked"), rows, align="lrr"), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("LAYERS", "RUN", "LOAD"))
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--load", choices=("idle", "busy"), default="idle")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1], args.child[2])
        return 0
    rounds = []
    for i in range(args.rounds):
        runs = {}
        for run in ("cold", "forked"):
            print(f"  round {i + 1}: {run} ...", file=sys.stderr, flush=True)
            runs[run] = phases(run_child(args.layers, run, args.load))
        rounds.append(runs)
    print(f"# {args.layers} layers, {args.load} ({time.strftime('%Y-%m-%d %H:%M')})\n")
    print(report(rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
