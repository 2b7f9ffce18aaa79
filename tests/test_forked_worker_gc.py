"""A forked compile worker freezes the objects it inherited (NOTE: [a forked
worker's inherited objects are frozen], runtime/pipeline/tiered/forked_workers.py):
its collections walk only what it makes after the fork, and the serving
process freezes nothing."""

from __future__ import annotations

import gc
import json
import os
from types import SimpleNamespace
from typing import Any

from stitch.runtime.pipeline.tiered import forked_workers

# An object of the serving process's, tracked by the collector.
INHERITED = [["the serving process's"]]


def _report_what_a_collection_walks(name: str) -> Any:
    """A forked worker's compile: reports, as its error, what the collector
    walks in it and what it froze."""
    mine = [["the worker's"]]
    walked = gc.get_objects()
    raise RuntimeError(
        json.dumps(
            {
                "frozen": gc.get_freeze_count(),
                "inherited_walked": any(o is INHERITED for o in walked),
                "own_walked": any(o is mine for o in walked),
            }
        )
    )


def test_a_forked_worker_collects_only_what_it_makes() -> None:
    assert any(o is INHERITED for o in gc.get_objects())
    launch = forked_workers.forker(_report_what_a_collection_walks, None)
    worker = launch([SimpleNamespace(pieces=[SimpleNamespace(name="p")])], 0, False)
    with os.fdopen(worker.reports) as lines:
        report = json.loads(lines.readline())
    worker.ended()
    seen = json.loads(report["error"].split(": ", 1)[1])
    # The serving process's objects are frozen in the worker, not walked; the
    # worker's own are collected as usual.
    assert seen["frozen"] > 0 and not seen["inherited_walked"], seen
    assert seen["own_walked"], seen
    # The serving process goes on collecting its own.
    assert gc.get_freeze_count() == 0
    assert any(o is INHERITED for o in gc.get_objects())
