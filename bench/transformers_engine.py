"""transformers' continuous batching, eager, with its own compile and through Stitch.

Usage::

    python bench/transformers_engine.py                  # 64 prompts of 16-512 tokens, 64 new
    python bench/transformers_engine.py --prompts 16 --new-tokens 16   # a quick look

Each run is a fresh process, one after the other in one invocation (side by
side): eager, the engine's own compile cold and warm, Stitch cold and warm.
What each column means is in the docstring of ``stitch.runtime.cli.engine_job``
(``stitch run --engine transformers`` prints the same table for a smaller
workload).  Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import sys

from stitch.runtime.cli.engine_job import Workload, run_engine_table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--shortest", type=int, default=16)
    parser.add_argument("--longest", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    work = Workload(args.prompts, args.shortest, args.longest, args.new_tokens)
    return run_engine_table(work, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
