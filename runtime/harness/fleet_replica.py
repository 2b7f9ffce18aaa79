"""One replica of a fleet, in a process of its own: compile (or fetch) a model
through the shared store, run its first forward, and say what it took.

Run: ``python -m stitch.runtime.harness.fleet_replica '<spec as JSON>'``; the
result is printed as JSON on the line that starts with ``RESULT`` (read it with
:func:`read_result`: in a tiered start the publish thread may log after it).  The spec: ``model`` ("llama": the
built-in example through ``aot_compile``; "hf-llama": a tiny transformers
Llama through ``torch.compile(backend=StitchBackend(...), dynamic=True)``),
``layers``, ``cache_dir``, ``cache_url``, and optionally ``wait_s``,
``lease_s``, ``start_at`` (a ``time.time()`` all replicas start at) and
``compile_delay_s`` (llama only: a pause before the compile, the lease held,
to widen the window another replica waits in) and ``tiered`` (a tiered
start, one compile worker, forwards until every piece is swapped in).  The store's key comes from the environment
(``$STITCH_CACHE_KEY``), as it would in a fleet.  Used by
tests/test_fleet_cache.py and bench/fleet_start.py.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .marked_result import marked_result, print_marked


def _model(spec: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(model, its example inputs, a function running one forward of ``fn``)."""
    if spec["model"] == "llama":
        from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs

        cfg = LlamaConfig(num_layers=spec.get("layers", 2))
        model = build_llama(cfg)
        inputs = llama_inputs(cfg, 8)

        def run(fn: Any) -> Any:
            model.reset_kv_caches()
            return fn(*inputs)

        return model, inputs, run
    from stitch.runtime.hf.tiny_models import build_model, example_inputs, output_tensor

    model = build_model("llama", layers=spec.get("layers", 2))
    kwargs = example_inputs("llama", 2, 8)

    def run_hf(fn: Any) -> Any:
        return output_tensor("llama", fn(**kwargs))

    return model, kwargs, run_hf


def _slow_backend(config: Any, seconds: float) -> Any:
    """A backend that holds ``seconds`` before compiling: a long compile, in
    which the lease is held (and renewed) while the other replicas wait.

    Only for ``model == "llama"``: ``aot_compile`` takes the saved forward's
    lease before torch's trace calls the backend, and a replica that installs
    the entry instead never calls it."""
    from stitch.runtime import StitchBackend

    class SlowBackend(StitchBackend):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            time.sleep(seconds)
            return super().__call__(*args, **kwargs)

    return SlowBackend(config, serializable=True)


def replica(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from stitch.runtime import (
        CompilationConfig,
        StitchBackend,
        aot_compile,
        compilation_counter,
    )

    model, inputs, run = _model(spec)
    with torch.no_grad():
        eager = run(model)
    config = CompilationConfig(
        cache_dir=spec["cache_dir"],
        cache_url=spec.get("cache_url", ""),
        cache_wait_s=spec.get("wait_s", 600.0),
        cache_lease_s=spec.get("lease_s", 30.0),
        tiered_start=spec.get("tiered", False),
        compile_workers=1 if spec.get("tiered") else 0,
    )
    backend = None
    if spec.get("compile_delay_s"):
        if spec["model"] != "llama":
            raise ValueError("compile_delay_s is for the llama example only")
        backend = _slow_backend(config, spec["compile_delay_s"])
    while time.time() < spec.get("start_at", 0.0):
        time.sleep(0.005)
    before = compilation_counter.snapshot()
    start = time.perf_counter()
    with torch.no_grad():
        if spec["model"] == "llama":
            compiled = aot_compile(
                model,
                inputs,
                None if backend else config,
                dynamic_dims={0: [0], 1: [0]},
                backend=backend,
            )
            out = run(compiled)
            warm = compiled.warm
        else:
            backend = StitchBackend(config)
            fn = torch.compile(model, backend=backend, dynamic=True)
            out = run(fn)
            warm = bool(backend.compiled) and backend.compiled[0].warm
    first = time.perf_counter() - start
    tiered = {}
    if spec.get("tiered"):
        if spec["model"] == "llama":
            backend, fn = compiled.backend, compiled
        tiered = _serve_until_settled(backend, fn, run, eager)
    after = compilation_counter.snapshot()
    return {
        **tiered,
        "first_forward_s": first,
        "warm": warm,
        "inductor_compiles": after["num_inductor_compiles"]
        - before["num_inductor_compiles"],
        "tokens_equal": bool(torch.equal(out.argmax(-1), eager.argmax(-1))),
        "max_abs_diff": (out - eager).abs().max().item(),
    }


def _serve_until_settled(backend: Any, fn: Any, run: Any, eager: Any) -> dict:
    """Forwards until the tiered start's last piece is swapped in or given up
    (``spec["tiered"]``), each compared with eager's tokens."""
    import torch

    tier = backend.compiled[0].tier if backend is not None else None
    forwards, equal = 0, True
    deadline = time.monotonic() + 300
    while tier is not None and not tier.settled and time.monotonic() < deadline:
        with torch.no_grad():
            equal &= bool(torch.equal(run(fn).argmax(-1), eager.argmax(-1)))
        forwards += 1
        time.sleep(0.05)
    timeline = tier.timeline() if tier is not None else {}
    return {
        "tier": tier is not None,
        "installed": bool(tier is not None and tier.installed),
        "settled": bool(tier is not None and tier.settled),
        "swapped": len(timeline.get("swapped_at", {})),
        "pieces": len(tier.backends) if tier is not None else 0,
        "uncompiled": timeline.get("uncompiled", {}),
        "forwards_meanwhile": forwards,
        "tokens_equal_meanwhile": equal,
    }


RESULT = "stitch-replica-result: "


def read_result(output: str) -> dict[str, Any]:
    """The result a replica printed, from its whole output."""
    result = marked_result(output, RESULT)
    if result is None:
        raise ValueError(f"no {RESULT.strip()!r} line in: {output[-2000:]}")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    result = replica(json.loads(sys.argv[1]))
    print_marked(RESULT, result)
