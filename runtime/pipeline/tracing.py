"""What a backend call reports: its line in the log, and its split in torch's
structured trace (``TORCH_TRACE``, tlparse) beside the emitted source."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Container

from ..compat.trace import trace_artifact
from ..store.dump import PieceReport
from ..store.index import PieceRecord
from .results import Built, Split

log = logging.getLogger("stitch")

# The artifacts in the structured trace: the split (JSON), the emitted source.
SPLIT_ARTIFACT = "stitch_split"
SOURCE_ARTIFACT = "stitch_execution_fn"

# How each piece was made, from its report's cache state (PieceReport.cache).
MADE = {
    "miss": "compiled",
    "hit": "loaded",
    "shared": "reused",  # a repeated piece's runnable, or this piece's general one
    "partial": "loaded and compiled",  # some shape targets each
    "refused": "refused",  # compiled wrong once (NOTE: [a piece that compiled wrong])
}


def split_record(
    reports: list[PieceReport], deferred: Container[str]
) -> dict[str, object]:
    """The split as the trace shows it: each piece in graph order, the module
    range it covers, and whether it was compiled, loaded from the cache or
    reused from an identical piece (a splitting op's piece runs eagerly; a
    tiered start's missing piece is compiled by a worker)."""
    pieces = []
    for r in reports:
        if r.splitting:
            made = "eager (splitting op)"
        elif r.name in deferred:
            made = "deferred to a compile worker"
        else:
            made = MADE.get(r.cache, r.cache)
        pieces.append(
            {
                "name": r.name,
                "splitting": r.splitting,
                "module_range": r.module_path,
                "targets": r.targets,
                "made": made,
                "seconds": round(r.seconds, 6),
            }
        )
    return {"pieces": pieces}


def trace_source(code: str) -> None:
    """Hand the emitted source to torch's structured trace (``TORCH_TRACE``, tlparse)."""
    trace_artifact(SOURCE_ARTIFACT, "string", lambda: code)


def trace_split(reports: list[PieceReport], deferred: Container[str]) -> None:
    """Hand the split to torch's structured trace (built only when it is on)."""
    trace_artifact(
        SPLIT_ARTIFACT,
        "json",
        lambda: json.dumps(split_record(reports, deferred)),
    )


def is_warm(from_cache: bool, reports: list[PieceReport]) -> bool:
    """A warm start: the source and every piece came from the cache.  Repeated pieces
    report "shared": they run what their first instance loaded."""
    return from_cache and all(
        r.cache in ("hit", "shared") for r in reports if not r.splitting
    )


def log_summary(
    graph_key: str,
    split: Split,
    records: dict[str, PieceRecord],
    warm: bool,
    seconds: float,
    cache_dir: str | None,
) -> None:
    log.info(
        "stitch: graph %s: %d pieces (%d compiled, %d unique), %s start in %.2fs%s",
        graph_key[:12],
        len(split.items),
        len(split.compiled),
        len({tuple(e.key for e in r.entries) for r in records.values()}),
        "warm" if warm else "cold",
        seconds,
        f", cache {cache_dir}" if cache_dir else "",
    )


def summary(built: Built) -> tuple[bool, float, str | None]:
    """A backend call's result logged: whether it was warm, its seconds (from
    its start), and its entry's folder where the entry holds its source."""
    warm = is_warm(built.emitted.from_cache, built.reports)
    seconds = time.perf_counter() - built.start
    cache = built.cache
    cache_dir = cache.directory if cache and cache.holds_source() else None
    log_summary(built.graph_key, built.split, built.records, warm, seconds, cache_dir)
    return warm, seconds, cache_dir
