"""``stitch cache``: the group, and ``explain`` (why an entry was not used).

The store subcommands (``ls``, ``push``, ``pull``, ``verify``) are in
``cache_store_cmd.py``; each module adds its parsers with one ``_add_<name>``
function per subcommand.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from .cache_store_cmd import STORE_COMMANDS


def add_cache(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="list, verify, share and explain cache entries (local or a store)",
        description="Work with a local cache folder or a fleet's shared store "
        "(redis://host:port/db; docs/cache.md, 'A fleet: shared store').",
    )
    commands = parser.add_subparsers(dest="cache_command", metavar="COMMAND")
    commands.required = True
    for add in (*STORE_COMMANDS, _add_explain):
        add(commands)


def _add_explain(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="say why a cache entry was not used: what differs from another",
        description="Compare two compile cache entries (rank folders), or one "
        "with the nearest other entry of its cache root, and say which factor "
        "of their key differs: a config field and both values, the torch, "
        "Triton, Python or Stitch version, the devices, the serving engine's "
        "group, or the graph (the first line that differs). A run that starts "
        "cold says the same in its log ('starts cold: ...') and 'stitch run' "
        "prints it. Warm loads of ENTRY that failed and compiled instead (a "
        "recorded guard, the source, a piece or a prebuilt record) are listed "
        "too, as their warning said.",
    )
    parser.add_argument("entry", metavar="ENTRY")
    parser.add_argument("other", metavar="ENTRY2", nargs="?")
    parser.set_defaults(handler=run_explain)


def run_explain(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from stitch.core.errors import StitchCacheError
    from stitch.runtime.store.explain import differences, nearest, read_factors
    from stitch.runtime.store.location import root_of_entry

    failed = _failed_loads(args.entry, out)
    try:
        here = read_factors(args.entry)
        if args.other:
            other, there = args.other, read_factors(args.other)
        else:
            found = nearest(root_of_entry(args.entry), here, skip=args.entry)
            if found is None:
                print(f"{args.entry}: no other entry in its cache to compare", file=out)
                return 0 if failed else 2
            other, there = found
    except StitchCacheError as exc:
        print(f"error: {exc}", file=out)
        return 2
    diff = differences(there, here)
    print(
        f"{os.path.abspath(args.entry)}\n  against {os.path.abspath(other)}:", file=out
    )
    for line in diff or ["no recorded factor differs (another rank or guard chain)"]:
        print(f"  - {line}", file=out)
    return 0


def _failed_loads(entry: str, out: TextIO) -> bool:
    """Print why warm loads of ``entry`` failed (NOTE: [a warm load that fails
    compiles instead]); whether any did."""
    from stitch.core.errors import StitchCacheError
    from stitch.runtime.store.load_failures import describe, read_failures

    try:
        failures = read_failures(entry)
    except StitchCacheError as exc:
        print(f"{os.path.abspath(entry)}: {exc}", file=out)
        return False
    if failures:
        print(f"{os.path.abspath(entry)}: warm loads compiled instead:", file=out)
        for failure in failures:
            print(f"  - {describe(failure)}", file=out)
    return bool(failures)
