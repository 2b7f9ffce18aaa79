"""One compile of a tiny transformers model in a fresh process (the warm-start test).

Usage: ``python tests/hf_worker.py '<json spec>'`` with ``family``, ``attn``
(None: the default attention), ``layers``, ``cache_dir`` and ``lengths``; or,
for a model no family of ``stitch.runtime.hf`` builds, ``config_class`` (a
transformers config of a causal LM) and its ``fields`` in place of ``family``
and ``layers``.  Prints one line ``WORKER <json report>``: the counter deltas,
whether each backend call started warm, the largest difference from eager and
the warnings Stitch logged.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def build(spec: dict, attn: str | None) -> Any:
    """The spec's model: a family's tiny model, or one from ``config_class``."""
    import torch
    import transformers

    from stitch.runtime.hf import build_model

    if "family" in spec:
        return build_model(
            spec["family"], layers=spec["layers"], attn_implementation=attn
        )
    config = getattr(transformers, spec["config_class"])(**spec["fields"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model.eval()


def main(spec: dict) -> dict:
    import torch

    from stitch.runtime import CompilationConfig, StitchBackend, compilation_counter
    from stitch.runtime.hf import example_inputs, output_tensor

    family = spec.get("family", "llama")  # the inputs and output of a causal LM
    model = build(spec, spec.get("attn"))
    # The test counts the compiles of this process (none: it starts warm).
    config = CompilationConfig(cache_dir=spec["cache_dir"], tiered_start=False)
    backend = StitchBackend(config)
    compiled = torch.compile(model, backend=backend, dynamic=True)
    handler = Warnings()
    logging.getLogger("stitch").addHandler(handler)
    before = compilation_counter.snapshot()
    reference = build(spec, None)
    errors = []
    with torch.no_grad():
        for n in spec["lengths"]:
            kwargs = example_inputs(family, 2, n, seed=n)
            out = output_tensor(family, compiled(**kwargs))
            ref = output_tensor(family, reference(**kwargs))
            errors.append((out - ref).abs().max().item())
    after = compilation_counter.snapshot()
    return {
        "deltas": {k: after[k] - before[k] for k in after},
        "warm": [r.warm for r in backend.compiled],
        "guards": [list(r.guards) for r in backend.compiled],
        "max_error": max(errors),
        "warnings": handler.lines,
    }


if __name__ == "__main__":
    print("WORKER " + json.dumps(main(json.loads(sys.argv[1]))))
