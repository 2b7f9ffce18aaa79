"""One ``stitch.runtime.aot_compile`` in a fresh process (for tests/test_aot.py).

Usage: ``python tests/aot_worker.py '<json spec>'``.  The spec names the model
module (a file defining ``build()`` and ``Model``), the cache directory, the
config fields and the sizes to run.  The worker prints ``WORKER <json report>``:
whether the function was loaded warm, which of the ``WATCHED`` modules the
process imported, its cache entry, the files under the cache it mapped (the
kernel libraries it loaded), the counter deltas, the ``stitch`` warnings, how
far each output is from eager and (with ``outputs``) saves the outputs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import time
import types
from typing import Any

# Modules a warm start has no use for: it compiles nothing and generates no code.
WATCHED = ("torch._dynamo", "torch._inductor", "black", "jinja2")
# What a load through Inductor imports besides (seconds on the GPU machine):
# sympy, the shape environment and FSDP (through the Triton kernel op).
HEAVY = ("sympy", "torch.fx.experimental.symbolic_shapes", "torch.distributed.fsdp")
# Triton (0.7 s with its source hash): a warm process launches the pieces' kernels
# and stitch::attention's from cubins (NOTE: [an op's Triton kernel without
# Triton] in runtime/kernels/static_launch.py).
TRITON = "triton"


class _ImportTracer:
    """A ``sys.meta_path`` finder that finds nothing: it notes where each watched
    module was first imported from (the innermost frames outside importlib), so
    that a warm process that imports one says who asked for it."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.stacks: dict[str, list[str]] = {}

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name in self.names and name not in self.stacks:
            import traceback

            frames = [
                f"{f.filename}:{f.lineno} {f.name}"
                for f in traceback.extract_stack()[:-1]
                if "importlib" not in f.filename and "aot_worker" not in f.filename
            ]
            self.stacks[name] = frames[-12:]
        return None


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def dynamo_calls(call: Any) -> tuple[Any, set[str]]:
    """``call`` wrapped so that the ``torch._dynamo`` functions each call runs
    are recorded (``sys.setprofile``), and the set of ``file:function`` they
    are recorded in."""
    ran: set[str] = set()

    def profile(frame: types.FrameType, event: str, arg: Any) -> None:
        if event == "call" and "/torch/_dynamo/" in frame.f_code.co_filename:
            ran.add(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    def profiled(*args: Any, **kwargs: Any) -> Any:
        sys.setprofile(profile)
        try:
            return call(*args, **kwargs)
        finally:
            sys.setprofile(None)

    return profiled, ran


def load_model_module(path: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("aot_test_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["aot_test_model"] = module
    spec.loader.exec_module(module)
    return module


def mapped_under(folder: str) -> list[str]:
    """Files under ``folder`` this process has mapped (dlopen'd libraries)."""
    folder = os.path.realpath(folder) + os.sep
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            fields = [line.split(maxsplit=5) for line in f]
    except OSError:
        return []
    return sorted(
        {f[5].strip() for f in fields if len(f) == 6 and f[5].startswith(folder)}
    )


def main(spec: dict) -> dict:
    started = time.perf_counter()
    tracer = _ImportTracer(WATCHED + HEAVY)
    sys.meta_path.insert(0, tracer)
    import torch

    from stitch.runtime import CompilationConfig, aot_compile, compilation_counter
    from stitch.runtime.examples import llama_inputs

    collect = _Collect()
    logging.getLogger("stitch").addHandler(collect)
    module = load_model_module(spec["model_file"])
    device = spec.get("device", "cpu")
    model = module.build().to(device)
    config = CompilationConfig(cache_dir=spec["cache_dir"], **spec.get("config", {}))
    cudagraphs = None
    if spec.get("emulate_graphs"):
        # CUDA graphs on CPU, emulated (see tests/test_cudagraph_cpu.py).
        from stitch.runtime.cudagraph import CUDAGraphManager, EmulatedGraphOps

        cudagraphs = CUDAGraphManager(config.cudagraphs, ops=EmulatedGraphOps())
    before = compilation_counter.snapshot()
    first = None
    outputs: dict[int, torch.Tensor] = {}
    diffs: dict[str, float] = {}
    seconds: dict[str, float] = {}
    with torch.no_grad():
        for n in spec["sizes"]:
            ids, pos = llama_inputs(module.CFG, n, device=device)
            if first is None:
                first = aot_compile(
                    model,
                    (ids, pos),
                    config,
                    dynamic_dims={0: [0], 1: [0]},
                    cudagraphs=cudagraphs,
                )
                seconds["loaded"] = time.perf_counter() - started
                if spec.get("startup_capture"):
                    # A server captures every size before its first request.
                    def dummy(size: int, first: Any = first) -> None:
                        first(*llama_inputs(module.CFG, size, device=device))

                    first.cudagraphs.capture_sizes(dummy)
                    seconds["captured"] = time.perf_counter() - started
            model.reset_kv_caches()
            # Under CUDA graphs an output lives until the next forward.
            out = first(ids, pos).clone()
            if "first_output" not in seconds:
                if device != "cpu":
                    torch.cuda.synchronize()
                seconds["first_output"] = time.perf_counter() - started
            model.reset_kv_caches()
            ref = model(ids, pos)
            outputs[n] = out
            diffs[str(n)] = (out - ref).abs().max().item()
    after = compilation_counter.snapshot()
    if spec.get("outputs"):
        torch.save(outputs, spec["outputs"])
    forward = first.forward
    return {
        "warm": first.warm,
        "path": first.path,
        "plain_function": isinstance(forward, types.MethodType)
        and type(forward.__func__) is types.FunctionType,
        "imported": sorted(m for m in WATCHED if m in sys.modules),
        "heavy": sorted(m for m in HEAVY if m in sys.modules),
        # Who first imported each watched module: what to fix when a warm
        # process imports one.
        "import_stacks": tracer.stacks,
        "triton": TRITON in sys.modules,
        "entry": first.cache_entry,
        "mapped": mapped_under(spec["cache_dir"]),
        "counter": {k: after[k] - before[k] for k in after if after[k] != before[k]},
        "diffs": diffs,
        "warnings": collect.messages,
        # Padded runners built for the forward, and how often a graph replayed.
        "graph_runners": len(first.cudagraphs.runners) if first.cudagraphs else 0,
        "replays": sum(g.replays for g in cudagraphs.ops.graphs) if cudagraphs else 0,
        # Since the worker started (imports included): loaded, captured, first output.
        "seconds": seconds,
        # Whether Stitch started Inductor's CPU ISA probe (NOTE: [Inductor
        # warm-up overlaps the split], pipeline/inductor_warmup.py).
        "isa_probe": isa_probe_started(),
    }


def isa_probe_started() -> bool:
    warmup = sys.modules.get("stitch.runtime.pipeline.inductor_warmup")
    return warmup is not None and warmup._probe is not None


if __name__ == "__main__":
    report = main(json.loads(sys.argv[1]))
    print("WORKER " + json.dumps(report, sort_keys=True))
