"""One benchmark, run against two source trees in one run: before and after a change.

Run: ``python bench/compare_trees.py --before REV [--rounds 2] -- BENCH [ARGS...]``,
for example ``python bench/compare_trees.py --before main~3 -- bench/warm_start.py
--layers 16``.

The tree at ``REV`` is checked out into a temporary git worktree; each tree's
own copy of the benchmark runs with that tree's ``stitch`` first on the import
path (a folder holding a ``stitch`` namespace package whose parts link to the
tree's ``core``, ``codegen``, ``runtime`` and ``templates``), so the installed
package is not used.  The two trees alternate, ``--rounds`` times each, so
that load on the machine falls on both; every run's output is printed under a
heading naming its tree and round.  Refactors promise "unchanged within
noise": the rounds show what the noise is.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PARTS = ("core", "codegen", "runtime", "templates")


def shim(tree: Path, into: Path) -> Path:
    """A folder whose ``stitch`` package is ``tree``'s."""
    package = into / "stitch"
    package.mkdir(parents=True)
    for part in PARTS:
        (package / part).symlink_to(tree / part, target_is_directory=True)
    return into


def run(tree: Path, path: Path, bench: Sequence[str]) -> tuple[str, float]:
    env = dict(os.environ, PYTHONPATH=str(path))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(tree / bench[0]), *bench[1:]],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"{bench[0]} failed in {tree} (exit {done.returncode}):\n{done.stderr}"
        )
    return done.stdout, seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision of 'before'")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("bench", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    bench = [a for a in args.bench if a != "--"] if args.bench else []
    if not bench:
        parser.error("name the benchmark to run after --")
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.before],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="stitch-trees-") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(before), rev],
            cwd=REPO,
            check=True,
        )
        try:
            trees = {
                f"before ({rev})": (before, shim(before, Path(tmp) / "shim-before")),
                "after (working tree)": (REPO, shim(REPO, Path(tmp) / "shim-after")),
            }
            for round_ in range(1, args.rounds + 1):
                for name, (tree, path) in trees.items():
                    out, seconds = run(tree, path, bench)
                    print(f"## {name}, round {round_} ({seconds:.1f} s)\n")
                    print(out.rstrip() + "\n", flush=True)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before)],
                cwd=REPO,
                check=False,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
