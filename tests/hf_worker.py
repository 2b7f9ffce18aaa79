"""One compile of a tiny transformers model in a fresh process (the warm-start test).

Usage: ``python tests/hf_worker.py '<json spec>'`` with ``family``, ``attn``
(None: the default attention), ``layers``, ``cache_dir`` and ``lengths``.  Prints one line ``WORKER <json report>``: the
counter deltas, whether each backend call started warm, and the largest
difference from eager.
"""

from __future__ import annotations

import json
import sys


def main(spec: dict) -> dict:
    import torch

    from stitch.runtime import CompilationConfig, StitchBackend, compilation_counter
    from stitch.runtime.hf import build_model, example_inputs, output_tensor

    family = spec["family"]
    model = build_model(
        family, layers=spec["layers"], attn_implementation=spec.get("attn")
    )
    backend = StitchBackend(CompilationConfig(cache_dir=spec["cache_dir"]))
    compiled = torch.compile(model, backend=backend, dynamic=True)
    before = compilation_counter.snapshot()
    reference = build_model(family, layers=spec["layers"])
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
        "max_error": max(errors),
    }


if __name__ == "__main__":
    print("WORKER " + json.dumps(main(json.loads(sys.argv[1]))))
