"""One compile of the tiny llama-like model in a fresh process (for the tests).

Usage: ``python tests/backend_worker.py '<json spec>'``.  The spec names the cache
directory, the ``CompilationConfig`` fields (``tiered_start=False`` unless they
say otherwise), the model depth and the batch sizes to run.  The worker prints
one line ``WORKER <json report>``: the counter deltas, what each backend call
reported, the ``stitch`` warnings, and how far each output is from eager; with
``outputs`` it also saves the outputs (``torch.save``); ``passes`` names
Inductor passes of ``backend_support`` to run in every piece.

With ``ready_file``/``go_file`` it writes the first once imports are done and
waits for the second before compiling, so two workers start compiling together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main(spec: dict) -> dict:
    import torch

    from stitch.runtime import CompilationConfig, StitchBackend
    from stitch.runtime.examples import LlamaConfig

    import backend_support
    from backend_support import counting, eager_and_compiled, model_for

    collect = _Collect()
    logging.getLogger("stitch").addHandler(collect)
    cfg = LlamaConfig(num_layers=spec.get("layers", 2))
    model = model_for(cfg)
    # "passes": names of InductorPass classes in backend_support.
    passes = [getattr(backend_support, name)() for name in spec.get("passes", [])]
    # Every caller reads what this process compiled or loaded (counts, warm
    # or cold, the entry): its pieces compile in the backend call unless the
    # spec's config says otherwise.
    fields = {"tiered_start": False, **spec.get("config", {})}
    config = CompilationConfig(
        cache_dir=spec["cache_dir"], inductor_passes=passes, **fields
    )
    backend = StitchBackend(config)
    compiled = torch.compile(model, backend=backend, fullgraph=True)

    if spec.get("ready_file"):
        with open(spec["ready_file"], "w") as f:
            f.write(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not os.path.exists(spec["go_file"]):
            if time.monotonic() > deadline:
                raise SystemExit("worker: go_file never appeared")
            time.sleep(0.01)

    outputs: dict[int, torch.Tensor] = {}
    diffs: dict[str, float] = {}
    with counting() as deltas:
        for n in spec["sizes"]:
            ref, out = eager_and_compiled(
                model, compiled, cfg, n, spec.get("mark", "dynamic")
            )
            outputs[n] = out
            diffs[str(n)] = (out - ref).abs().max().item()
    if spec.get("outputs"):
        torch.save(outputs, spec["outputs"])
    return {
        "counter": deltas,
        "diffs": diffs,
        "warnings": collect.messages,
        "compiled": [
            {
                "warm": c.warm,
                "seconds": c.seconds,
                "cache_dir": c.cache_dir,
                "code_sha256": hashlib.sha256(c.code.encode()).hexdigest(),
                "reports": [[r.name, r.cache] for r in c.reports if not r.splitting],
            }
            for c in backend.compiled
        ],
    }


if __name__ == "__main__":
    report = main(json.loads(sys.argv[1]))
    print("WORKER " + json.dumps(report, sort_keys=True))
