"""``stitch inspect``: its arguments, and the handler that checks a cache (``inspect_job.inspect_cache``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_inspect(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="check a compile cache and print its index in human form",
        description=(
            "Check and print the entries of a Stitch compile cache and the saved "
            "forwards (aot_compile) under it: versions, the "
            "stitching source file and its hash, and per compiled piece the module "
            "path it covers, the sizes/ranges compiled and its artifacts. Every "
            "record is validated and every hash and artifact identity checked; "
            "problems (hash mismatches, records of the wrong type, a changed "
            "source, orphaned files, permissions a run would refuse) are listed. "
            "Exit status: 0 healthy, 1 a problem, 2 no cache entry found. "
            "CACHE_DIR may be one rank folder or any folder above it. "
            "docs/cache.md describes the cache and its trust model."
        ),
    )
    parser.add_argument("cache_dir", metavar="CACHE_DIR")
    parser.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from .inspect_job import inspect_cache

    return inspect_cache(args.cache_dir, sys.stdout)
