"""Dynamo's trace beside a neighbour process: which neighbour slows the first output.

Usage::

    python bench/trace_neighbours.py                # 5 rounds, the example llama at 3 layers
    python bench/trace_neighbours.py --rounds 9 --subject example:32
    python bench/trace_neighbours.py --neighbours imports probe

Issue 75's spawned rows: a spawned compile worker started with the backend
imports torch and Inductor and probes the vector ISA while the serving
process traces.  This bench asks what of that costs the trace.  Each run is
``bench/under_load.py``'s Dynamo-alone child, started by its ``run_child``
(``backend="eager"``, ``dynamic=True``, a fresh process, empty caches; "first
output", seconds from ``torch.compile``), with one neighbour started just
before it and killed after it:

- ``none``: no neighbour;
- ``busy``: ``while True: pass``, one core kept busy with next to no memory;
- ``imports``: a fresh interpreter of this Python importing torch, Dynamo and
  Inductor's ``compile_fx``, then Inductor's ``valid_vec_isa_list()`` (its ISA
  checks built with the C++ compiler, one after the other) with an empty
  Inductor cache;
- ``probe``: the same imports, then Stitch's ISA probe
  (``stitch.runtime.compat.isa_probe.probe_cpu_isa``: up to the ISA Inductor
  picks, one check at a time; every candidate side by side, as many at a
  time as the process has cores, where ``$ATEN_CPU_CAPABILITY`` picks): a
  spawned worker's start as a tiered start's worker makes it.  Figures
  recorded before 2026-11-30 were taken with every candidate checked.

The runs alternate within each round, so that the machine's drift falls on
each alike; the table gives each round's figures, the median, and the
median of each round's difference from ``none``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from under_load import run_child

NEIGHBOURS = ("none", "busy", "imports", "probe")
IMPORTS = "import torch, torch._dynamo, torch._inductor.compile_fx\n"
CODE = {
    "busy": "while True: pass",
    "imports": IMPORTS
    + "from torch._inductor import cpu_vec_isa\ncpu_vec_isa.valid_vec_isa_list()\n",
    "probe": IMPORTS
    + "from stitch.runtime.compat import isa_probe\nisa_probe.probe_cpu_isa()\n",
}


def first_output(subject: str, kind: str, root: str) -> float:
    """One Dynamo-alone child (``under_load.run_child``, its caches under
    ``root``) beside ``kind``: its first output, seconds."""
    beside = None
    if kind != "none":
        # The neighbour's Inductor cache is empty and its own.
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(dir=root))
        beside = subprocess.Popen([sys.executable, "-c", CODE[kind]], env=env)
    try:
        return float(run_child(subject, "dynamo", "-", root)["first_s"])
    finally:
        if beside is not None:
            beside.kill()
            beside.wait()


def main() -> None:
    from stitch.runtime.tables import markdown_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--subject", default="example:3")
    parser.add_argument(
        "--neighbours", nargs="+", choices=NEIGHBOURS, default=list(NEIGHBOURS)
    )
    args = parser.parse_args()
    kinds = ["none", *(k for k in args.neighbours if k != "none")]
    got: dict[str, list[float]] = {kind: [] for kind in kinds}
    root = tempfile.mkdtemp(prefix="trace-neighbours-")
    for round_ in range(args.rounds):
        for kind in kinds:
            got[kind].append(first_output(args.subject, kind, root))
            print(f"round {round_ + 1}: {kind} {got[kind][-1]:.2f} s", flush=True)
    rows = []
    for kind in kinds:
        differences = [a - b for a, b in zip(got[kind], got["none"], strict=True)]
        rows.append(
            [
                kind,
                ", ".join(f"{s:.2f}" for s in got[kind]),
                f"{statistics.median(got[kind]):.2f}",
                "-" if kind == "none" else f"{statistics.median(differences):+.2f}",
            ]
        )
    print(f"\n{args.subject}, Dynamo alone's first output (s) beside a neighbour:\n")
    print(
        markdown_table(
            ["neighbour", "first output, by round", "median", "vs none, median"],
            rows,
            "llrr",
        )
    )


if __name__ == "__main__":
    main()
