"""A restart's model load, the old way and through stitch.runtime.weights, side by side.

Run: ``python bench/restart_load.py`` (``--device cuda`` on a GPU machine;
``--help`` for the models and repeats).

Each row is a fresh process that imports what a warm restart of
bench/gpu_warm_start.py imports and loads the example llama from the
weights file a first process saved (every tensor but the KV caches, bf16):

``old``  as ``gpu_serving_model.restarted_model`` did: ``import stitch.runtime``
         (every part, as its ``__init__`` imported them), the model built in
         bf16 on the device (a random init), ``load_file(device=...)`` (pageable
         memory, then the device), each tensor copied into the model, the KV
         caches zeroed again (their first zeroing is in the build);
``new``  stitch.runtime.weights (NOTE: [the order of a model's load]): the read
         starts after ``import torch``, on threads, beside ``import stitch``
         and the build on the meta device; the tensors are the model's.  Its
         ``KV cache`` is the caches' one zeroing, inside ``meta build``.

The table gives each phase's seconds (the median of the repeats) and, last,
``model ready``: from ``import torch`` done (the same for every program that
uses torch) to the model complete.  The phases of ``new`` overlap, so their
sum is more than that.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

MODELS = {
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=4, intermediate_size=256,
                 vocab_size=512),
    "8x1024": dict(num_layers=8, hidden_size=1024, num_heads=8,
                   intermediate_size=2816, vocab_size=32000),
    "16x2048": dict(num_layers=16, hidden_size=2048, num_heads=16,
                    intermediate_size=5632, vocab_size=32000),
}  # fmt: skip
PHASES = (
    "import torch",
    "import stitch",
    "CUDA context",
    "build (random init)",
    "meta build",
    "weight read",
    "weight copy",
    "device copy",
    "KV cache",
    "KV cache zeroed again",
    "model ready",
)


def _old(spec: dict[str, Any], phase: Any) -> None:
    import torch

    with phase("import stitch"):
        import stitch.runtime as runtime

        for name in runtime.__all__:  # every part, as its __init__ imported them
            getattr(runtime, name)
        from stitch.runtime.examples import LlamaConfig, LlamaModel
    from safetensors.torch import load_file

    device = torch.device(spec["device"])
    cfg = LlamaConfig(**spec["model"], dtype=torch.bfloat16)

    def sync() -> None:  # each phase's device work inside it
        if device.type == "cuda":
            torch.cuda.synchronize()

    with phase("build (random init)"):
        default = torch.get_default_dtype()
        torch.set_default_dtype(cfg.dtype)
        try:
            with torch.device(device):
                model = LlamaModel(cfg).to(cfg.dtype)
        finally:
            torch.set_default_dtype(default)
        sync()
    with phase("weight read"):
        tensors = load_file(spec["weights"], device=str(device))
        sync()
    with torch.no_grad():
        with phase("weight copy"):
            for name, t in tensors.items():
                owner, _, leaf = name.rpartition(".")
                getattr(model.get_submodule(owner), leaf).copy_(t)
            sync()
        with phase("KV cache zeroed again"):
            model.reset_kv_caches()
            sync()


def _new(spec: dict[str, Any], phase: Any, timeline: Any) -> None:
    import torch

    from stitch.runtime.weights import load_model, start_reading

    reader = start_reading([spec["weights"]], spec["device"], timeline=timeline)
    with phase("import stitch"):
        from stitch.runtime import CompilationConfig, aot_compile  # noqa: F401
        from stitch.runtime.examples import LlamaConfig, LlamaModel

    cfg = LlamaConfig(**spec["model"], dtype=torch.bfloat16)
    load_model(lambda: LlamaModel(cfg), reader).wait()
    if spec["device"].startswith("cuda"):
        torch.cuda.synchronize()  # the KV caches' memset, on the build's stream


def child(spec: dict[str, Any], started: float) -> dict[str, float]:
    import torch  # noqa: F401

    from stitch.runtime.weights import Timeline

    timeline = Timeline(started)
    imported = time.perf_counter()
    timeline.record("import torch", started, imported)
    if spec["way"] == "old":
        _old(spec, timeline.phase)
    else:
        _new(spec, timeline.phase, timeline)
    timeline.record("model ready", imported, time.perf_counter())
    return {p.name: p.busy for p in timeline.phases}


def save_weights(model: dict[str, Any], path: str) -> None:
    """The example llama's weights, random, bf16, every tensor but the KV
    caches (gpu_serving_model.save_weights' file), in a process of its own."""
    code = (
        "import sys, json, torch\n"
        "from safetensors.torch import save_file\n"
        "from stitch.runtime.examples import LlamaConfig, build_llama\n"
        "cfg = LlamaConfig(**json.loads(sys.argv[1]), dtype=torch.bfloat16)\n"
        "m = build_llama(cfg)\n"
        "save_file({n: t.contiguous() for n, t in [*m.named_parameters(),\n"
        "    *m.named_buffers()] if not n.endswith(('k_cache', 'v_cache'))},\n"
        "    sys.argv[2])\n"
    )
    subprocess.run([sys.executable, "-c", code, json.dumps(model), path], check=True)


def run(spec: dict[str, Any]) -> dict[str, float]:
    """One fresh process's seconds per phase."""
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def table(results: dict[str, list[dict[str, float]]]) -> str:
    from stitch.runtime.tables import markdown_table

    rows = []
    for name in PHASES:
        cells = []
        for way in ("old", "new"):
            runs = [r[name] for r in results[way] if name in r]
            cells.append(f"{statistics.median(runs):.3f}" if runs else "")
        if any(cells):
            rows.append((name, *cells))
    old, new = (
        statistics.median(r["model ready"] for r in results[w]) for w in ("old", "new")
    )
    rows.append(("old / new (model ready)", "", f"{old / new:.2f}x"))
    return markdown_table(("phase", "old s", "new s"), rows, "lrr")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,8x1024", help=", ".join(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-seqs", type=int, default=512)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        started = time.perf_counter()  # before import torch (as gpu_warm_start)
        print("RESULT " + json.dumps(child(json.loads(args.child), started)))
        return 0
    with tempfile.TemporaryDirectory(prefix="stitch-restart-") as scratch:
        for name in args.models.split(","):
            model = dict(MODELS[name], max_seqs=args.max_seqs, max_len=args.max_len)
            path = os.path.join(scratch, f"{name}.safetensors")
            save_weights(model, path)
            results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
            for _ in range(args.repeat):
                for way in ("old", "new"):  # alternated: a busy moment hits both
                    spec = {"model": model, "device": args.device, "weights": path}
                    results[way].append(run({**spec, "way": way}))
            size = os.path.getsize(path) / 2**20
            print(f"{name} ({size:.0f} MiB of weights), {args.device}, median of "
                  f"{args.repeat}; seconds (\"model ready\": after import torch)\n")  # fmt: skip
            print(table(results) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
