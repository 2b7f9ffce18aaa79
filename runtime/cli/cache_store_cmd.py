"""``stitch cache ls | push | pull | verify``: a local cache and a fleet's shared store.

Each ``_add_<name>(subparsers)`` registers one subcommand of ``stitch cache``
(``cache_cmd.py`` builds the group).  A TARGET is a cache folder or a store URL
(``redis://host:port/db``); the store's key comes from ``$STITCH_CACHE_KEY``
(or ``$STITCH_CACHE_KEY_FILE``), as in a run.  Exit status: 0 done, 1 a
problem found (verify) or a unit not moved (push, pull), 2 a target that
cannot be used (no key, an unknown scheme, a store that does not answer).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

from ..settings import SHARED_SCHEMES

LOCAL_HELP = "the local cache root (default: $STITCH_CACHE_DIR or ~/.cache/stitch)"

T = TypeVar("T")


def _is_url(target: str) -> bool:
    return target.startswith(SHARED_SCHEMES)


def _open(url: str, out: TextIO) -> Any:
    """The store at ``url`` with the fleet's key, or None (said on ``out``)."""
    from stitch.runtime.config import CompilationConfig
    from stitch.runtime.store.shared.fleet_cache import FleetCache

    shared = FleetCache.of(CompilationConfig(cache_url=url).cache)
    if shared is None:
        print(f"error: cannot use the store {url} (see the warning above)", file=out)
    return shared


def _from_store(url: str, out: TextIO, call: Callable[[Any], T]) -> T | None:
    """``call(shared)`` on the store at ``url``; None, said on ``out``, when the
    store cannot be used or did not answer (exit status 2)."""
    from stitch.runtime.store.shared.stores import StoreDown

    shared = _open(url, out)
    if shared is None:
        return None
    try:
        result = call(shared)
    except StoreDown as exc:
        why: object = exc
    else:
        if shared.alive:
            return result
        why = "see the warning above"
    print(f"error: the store {url} did not answer ({why})", file=out)
    return None


def _root(cache_dir: str | None) -> str:
    from stitch.runtime.config import CompilationConfig
    from stitch.runtime.store.location import cache_root

    return cache_root(CompilationConfig(cache_dir=cache_dir or "").cache)


def _add_ls(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ls",
        help="list the entries of a local cache or a shared store",
        description="List the units of a local cache (compile cache entries and "
        "saved forwards: what push would publish), or the entries of a shared "
        "store, least recently used first, with their size, writer and "
        "whether their signature holds.",
    )
    parser.set_defaults(handler=run_ls)
    parser.add_argument("target", metavar="TARGET", nargs="?", help="folder or URL")


def run_ls(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from stitch.runtime.store.shared.admin import age, stored_entries
    from stitch.runtime.store.shared.units import collect, local_units
    from stitch.runtime.tables import markdown_table

    target = args.target or _root(None)
    if not _is_url(target):
        rows = []
        for unit in local_units(target):
            files = collect(target, unit)
            size = sum(f.size for f, _ in files)
            rows.append([unit.name, len(files), f"{size / 1e6:.2f}"])
        print(f"{target}: {len(rows)} unit(s)", file=out)
        if rows:
            print(markdown_table(["unit", "files", "MB"], rows), file=out)
        return 0
    stored = _from_store(target, out, stored_entries)
    if stored is None:
        return 2
    rows = []
    for s in stored:
        e = s.entry
        if e is None:
            cells, signature = ["-", "-", "-"], f"refused: {s.problem}"
        else:
            cells, signature = [len(e.files), f"{e.size / 1e6:.2f}", e.writer], "ok"
        rows.append([s.name, *cells, age(s.last_used), signature])
    print(f"{target}: {len(rows)} entr{'y' if len(rows) == 1 else 'ies'}", file=out)
    if rows:
        header = ["entry", "files", "MB", "writer", "last used", "signature"]
        print(markdown_table(header, rows), file=out)
    return 0


def _add_verify(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check every entry of a local cache or a shared store",
        description="A folder: the checks of 'stitch inspect'. A store URL: "
        "each entry's signature, then every blob it names is read and hashed; "
        "what a replica would refuse is listed.",
    )
    parser.set_defaults(handler=run_verify)
    parser.add_argument("target", metavar="TARGET", help="folder or URL")


def run_verify(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if not _is_url(args.target):
        from .inspect_job import inspect_cache

        return inspect_cache(args.target, out)
    from stitch.runtime.store.shared.admin import stored_entries

    entries = _from_store(args.target, out, lambda t: stored_entries(t, blobs=True))
    if entries is None:
        return 2
    bad = [s for s in entries if s.entry is None or s.problem]
    for s in entries:
        print(f"{s.name}: {s.problem or 'ok'}", file=out)
    print(
        f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {len(bad)} refused",
        file=out,
    )
    return 1 if bad else 0


def _add_push(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "push",
        help="publish every unit of a local cache to a shared store",
        description="Publish the compile cache entries and saved forwards of a "
        "local cache to a shared store, as a run does after its compile: blobs "
        "first, then the signed manifest.",
    )
    parser.set_defaults(handler=run_push)
    parser.add_argument("url", metavar="URL")
    parser.add_argument("--cache-dir", metavar="DIR", help=LOCAL_HELP)


def run_push(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from stitch.runtime.store.shared.admin import push

    root = _root(args.cache_dir)
    done = _from_store(
        args.url, out, lambda shared: [(u.name, ok) for u, ok in push(shared, root)]
    )
    return _moved(done, "published", f"unit(s) from {root}", out)


def _add_pull(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pull",
        help="install entries of a shared store into a local cache",
        description="Install entries of a shared store (all, or those named) "
        "into a local cache, each verified as a run would before using it.",
    )
    parser.set_defaults(handler=run_pull)
    parser.add_argument("url", metavar="URL")
    parser.add_argument("entries", metavar="ENTRY", nargs="*")
    parser.add_argument("--cache-dir", metavar="DIR", help=LOCAL_HELP)


def run_pull(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from stitch.runtime.store.shared.admin import pull

    root = _root(args.cache_dir)
    done = _from_store(
        args.url, out, lambda shared: pull(shared, root, list(args.entries))
    )
    return _moved(done, "installed", f"entr(ies) into {root}", out)


def _moved(
    done: list[tuple[str, bool]] | None, verb: str, what: str, out: TextIO
) -> int:
    """Each unit push or pull moved (``verb``) or not, then the count of
    ``what``; the exit status (2: the store could not be used)."""
    if done is None:
        return 2
    for name, ok in done:
        print(f"{name}: {verb if ok else 'NOT ' + verb}", file=out)
    print(f"{sum(ok for _, ok in done)} of {len(done)} {what}", file=out)
    return 0 if all(ok for _, ok in done) else 1


STORE_COMMANDS = (_add_ls, _add_push, _add_pull, _add_verify)
