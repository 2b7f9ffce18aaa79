"""Why a run did not start warm: each entry's key factors, readable, and their differences.

NOTE: [an entry records what its key covers]
An entry's folder is named by hashes (``location.entry_key``): of the config,
the graph, torch and Stitch versions, the backend.  A miss says only that some
hash differs.  So each entry keeps, beside its index, ``factors.py``: the
config's hashed fields (``CompilationConfig.hash_factors``, as text), the
versions (torch, Triton, Python, Stitch), the inputs' devices, and the graph
as the lines its key hashes (``graph_lines``, then one line per example
input).  A run that misses compares its own factors with the nearest entry of
the cache root and says what differs, in words a user can act on; ``stitch
cache explain`` does the same for any two entries.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from stitch.core.errors import StitchCacheError

from . import codec, location
from .codec import Record
from .files import atomic_write, make_private_dirs

FACTORS_FILE = location.FACTORS_FILE
# Entries compared at most, most recently changed first (a miss reads a few).
NEAREST_LIMIT = 32


class EntryFactors(Record, frozen=True):
    """``factors.py``: what an entry's key covers, readable."""

    KIND = "entry-factors"
    VERSION = 1

    config: dict[str, str]
    versions: dict[str, str]
    backend: str
    devices: tuple[str, ...]
    group: str
    # The lines the graph key hashes: the graph's, then the example inputs'.
    graph: tuple[str, ...]


def triton_version() -> str:
    module = sys.modules.get("triton")
    if module is None:
        try:
            from importlib.metadata import version

            return version("triton")
        except Exception:  # noqa: BLE001 - not installed
            return "none"
    return str(getattr(module, "__version__", "unknown"))


def entry_factors(
    config_factors: dict[str, Any],
    backend: str,
    devices: list[str],
    group: str,
    graph: list[str],
) -> EntryFactors:
    return EntryFactors(
        {k: repr(v) for k, v in sorted(config_factors.items())},
        {
            "torch": str(torch.__version__),
            "triton": triton_version(),
            "python": sys.version.split()[0],
            "stitch": location.stitch_version(),
        },
        backend,
        tuple(sorted(set(devices))),
        group,
        tuple(graph),
    )


def save_factors(entry: str, root: str, factors: EntryFactors) -> None:
    """Write ``factors.py`` in ``entry`` (raises ``OSError``)."""
    make_private_dirs(entry, root)
    atomic_write(location.factors_file(entry), codec.encode(factors))


def read_factors(entry: str) -> EntryFactors:
    """The factors of ``entry``; :class:`StitchCacheError` naming the file."""
    path = location.factors_file(entry)
    try:
        return codec.read(EntryFactors, path)
    except FileNotFoundError:
        raise StitchCacheError(
            f"{entry} has no {FACTORS_FILE} (written by Stitch since the fleet "
            "cache; an older entry cannot be explained)"
        ) from None


# -- the differences -----------------------------------------------------------------


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def differences(there: EntryFactors, here: EntryFactors) -> list[str]:
    """What differs between an entry (``there``) and this run (``here``), in words."""
    out = []
    for name in sorted(set(there.versions) | set(here.versions)):
        a, b = there.versions.get(name, "?"), here.versions.get(name, "?")
        if a != b:
            out.append(f"{name} {a} there, {b} here")
    for name in sorted(set(there.config) | set(here.config)):
        a, b = there.config.get(name, "(unset)"), here.config.get(name, "(unset)")
        if a != b:
            out.append(
                f"config field {name}: {_short(a, 60)} there, {_short(b, 60)} here"
            )
    if there.backend != here.backend:
        out.append(f"backend {there.backend} there, {here.backend} here")
    if there.devices != here.devices:
        out.append(f"devices {list(there.devices)} there, {list(here.devices)} here")
    if there.group != here.group:
        out.append(
            "engine group (the serving engine's own config) "
            f"{there.group[:12] or '(none)'} there, {here.group[:12] or '(none)'} here"
        )
    first = next(
        (
            i
            for i, (a, b) in enumerate(zip(there.graph, here.graph, strict=False))
            if a != b
        ),
        None,
    )
    if first is not None:
        out.append(
            f"graph: first differing line #{first}: {_short(there.graph[first])!r} "
            f"there, {_short(here.graph[first])!r} here"
        )
    elif len(there.graph) != len(here.graph):
        n = min(len(there.graph), len(here.graph))
        longer = there.graph if len(there.graph) > n else here.graph
        out.append(
            f"graph: {len(there.graph)} lines there, {len(here.graph)} here "
            f"(from line #{n}: {_short(longer[n])!r})"
        )
    return out


def _distance(there: EntryFactors, here: EntryFactors) -> tuple[int, int]:
    """Fewer differing factors first, then the longer common graph prefix."""
    common = 0
    for a, b in zip(there.graph, here.graph, strict=False):
        if a != b:
            break
        common += 1
    return len(differences(there, here)), -common


def nearest(
    root: str, here: EntryFactors, skip: str = ""
) -> tuple[str, EntryFactors] | None:
    """The entry of the cache at ``root`` (not ``skip``) nearest to ``here``."""
    candidates = []
    try:
        entries = location.entry_folders(root)
    except OSError:
        return None
    for entry in entries:
        path = location.factors_file(entry)
        if os.path.abspath(entry) != os.path.abspath(skip or "/") and os.path.isfile(
            path
        ):
            candidates.append((os.path.getmtime(path), entry))
    best = None
    for _, entry in sorted(candidates, reverse=True)[:NEAREST_LIMIT]:
        try:
            there = read_factors(entry)
        except (StitchCacheError, OSError):
            continue
        score = _distance(there, here)
        if best is None or score < best[0]:
            best = (score, entry, there)
    return None if best is None else (best[1], best[2])


def explain_miss(root: str, entry: str, here: EntryFactors) -> str | None:
    """One line on why ``entry`` (missing) was not found warm: the nearest
    entry and what differs; None when the root holds no other entry."""
    found = nearest(root, here, skip=entry)
    if found is None:
        return None
    folder, there = found
    diff = differences(there, here) or [
        "nothing recorded (another rank or guard chain)"
    ]
    return (
        f"nearest entry {location.reference_name(root, folder)} differs in: "
        + "; ".join(diff)
    )
