"""``backend_worker.py`` that stops once the cache has recorded its first piece (for the tests).

Usage: ``python tests/cache_worker.py '<json spec>'`` with the worker's spec plus
``recorded_file``: once the first compiled piece is recorded in the cache index,
the worker writes that file and waits to be killed (SIGKILL, as a crash or the
OOM killer would), so the test kills it at a known point of a cold compile.
"""

from __future__ import annotations

import json
import os
import sys
import time


def stop_after_first_record(recorded_file: str) -> None:
    from stitch.runtime.store.cache import CompileCache

    record_piece = CompileCache.record_piece

    def record_then_wait(self: CompileCache, *args: object, **kwargs: object) -> None:
        record_piece(self, *args, **kwargs)  # type: ignore[arg-type]
        with open(recorded_file, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(600)

    CompileCache.record_piece = record_then_wait  # type: ignore[method-assign]


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    stop_after_first_record(spec["recorded_file"])
    from backend_worker import main

    main(spec)
    raise SystemExit("cache_worker: the compile ended without recording a piece")
