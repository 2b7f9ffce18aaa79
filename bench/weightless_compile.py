"""A compile without weights, and a start that overlaps it with loading the weights.

Usage::

    python bench/weightless_compile.py

NOTE: [a compile without weights] (runtime/saved/weightless.py).  Two starts
of the 3-layer example through ``aot_compile`` (as ``stitch run`` makes
them) after an ordinary compile with the weights, and two after
``compile_without_weights``, each in a fresh process: time to the first
output, whether each was warm and how many Inductor compiles it ran; then the
peak resident memory of the weightless compile of a Llama with 3.8 GB of
float32 weights (``BIG``), against those weights.  Last, a start that loads a
checkpoint (``from_pretrained`` of a saved random Llama, ``CHECKPOINT``) and
serves its first forwards through ``torch.compile(backend=Stitch)``: one
after the other, and with ``stitch compile --config`` started first, in a
process of its own, while the weights load.

Results: docs/performance.md ("Cold start").
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

RESULT = "WEIGHTLESS_RESULT "


# A model with 3.8 GB of float32 weights, for the weightless compile's memory.
BIG = dict(
    vocab_size=32000,
    hidden_size=4096,
    num_heads=32,
    num_layers=4,
    intermediate_size=11008,
)


def aot_child(run: str, layers: int, cache: str) -> dict[str, Any]:
    """``stitch compile``'s path (``run`` "weightless"; the ``BIG`` model when
    ``layers`` is 0), or a start through ``aot_compile`` as ``stitch run``
    makes it ("start")."""
    import resource

    import torch

    from stitch.runtime import CompilationConfig, aot_compile, compilation_counter
    from stitch.runtime.examples import (
        LlamaConfig,
        LlamaModel,
        build_llama,
        llama_inputs,
    )
    from stitch.runtime.saved.weightless import compile_without_weights

    cfg = LlamaConfig(**BIG) if layers == 0 else LlamaConfig(num_layers=layers)
    config = CompilationConfig(cache_dir=cache, max_num_batched_tokens=cfg.max_seqs)
    dims = {0: [0], 1: [0]}
    if run == "weightless":
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        done = compile_without_weights(
            lambda: LlamaModel(cfg),
            llama_inputs(cfg, 1, seed=1),
            config,
            dynamic_dims=dims,
        )
        with torch.device("meta"):
            meta = LlamaModel(cfg)
        weights = sum(p.numel() * p.element_size() for p in meta.parameters())
        return {
            "seconds": done.seconds,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "base_mib": base,
            "weights_mib": weights / 2**20,
        }
    model = build_llama(cfg)
    before = compilation_counter.num_inductor_compiles
    t0 = time.perf_counter()
    with torch.no_grad():
        compiled = aot_compile(
            model, llama_inputs(cfg, 1, seed=1), config, dynamic_dims=dims
        )
        compiled(*llama_inputs(cfg, 8, seed=8))
    return {
        "first_s": time.perf_counter() - t0,
        "warm": compiled.warm,
        "compiles": compilation_counter.num_inductor_compiles - before,
    }


def weightless_table() -> str:
    """Starts after ``stitch compile`` against ordinary warm starts, and the
    weightless compile's peak memory on the BIG model."""
    from stitch.runtime.tables import markdown_table

    rows = []
    with tempfile.TemporaryDirectory(prefix="stitch-weightless-") as root:
        for label, plan in (
            ("after a compile with the weights", ["start", "start", "start"]),
            ("after stitch compile (no weights)", ["weightless", "start", "start"]),
        ):
            cache = os.path.join(root, label.split()[1])
            os.makedirs(cache)
            print(f"  weightless: {label} ...", file=sys.stderr, flush=True)
            warm = [run_child("aot", run, 3, cache) for run in plan][1:]
            rows.append(
                (
                    label,
                    f"{statistics.median(r['first_s'] for r in warm):.3f}",
                    "yes" if all(r["warm"] for r in warm) else "NO",
                    str(sum(r["compiles"] for r in warm)),
                )
            )
        print("  weightless: the 3.8 GB model ...", file=sys.stderr, flush=True)
        big_cache = os.path.join(root, "big")
        os.makedirs(big_cache)
        big = run_child("aot", "weightless", 0, big_cache)
    headers = (
        "3-layer example: two starts",
        "to first output (s, median)",
        "warm",
        "Inductor compiles",
    )
    share = big["peak_mib"] / big["weights_mib"]
    return (
        "compile without weights\n\n"
        + markdown_table(headers, rows, align="lrll")
        + f"\n\nstitch compile of a Llama with {big['weights_mib'] / 1024:.2f} GiB of "
        f"float32 weights: {big['seconds']:.1f} s, peak memory {big['peak_mib']:.0f} MiB "
        f"(after imports {big['base_mib']:.0f} MiB), {share:.3f} of the weights "
        f"(< 0.25: {'met' if share < 0.25 else 'MISSED'})"
    )


# A checkpoint worth loading: a Llama of 4 layers x 1024 (about 0.4 GB in float32).
CHECKPOINT = dict(
    vocab_size=32000,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=4,
    num_attention_heads=16,
    num_key_value_heads=4,
)


def checkpoint_child(run: str, folder: str, cache: str) -> dict[str, Any]:
    """Load the checkpoint in ``folder`` and serve its first forward through
    ``torch.compile(backend=Stitch, dynamic=True)``: "save" writes the
    checkpoint; "sequential" loads, then compiles; "overlap" starts ``stitch
    compile --config`` first and loads meanwhile, then starts warm."""
    import torch
    import transformers

    from stitch.runtime import CompilationConfig, StitchBackend, compilation_counter
    from stitch.runtime.hf.tiny_models import example_inputs

    if run == "save":
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CHECKPOINT))
        model.save_pretrained(folder)
        return {}
    t0 = time.perf_counter()
    worker = None
    if run == "overlap":
        command = [sys.executable, "-m", "stitch.runtime.cli.main", "compile"]
        command += ["--config", folder, "--cache-dir", cache]
        worker = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    loaded = time.perf_counter() - t0
    if worker is not None and worker.wait() != 0:
        raise SystemExit("stitch compile failed")
    compiled_at = time.perf_counter() - t0
    backend = StitchBackend(CompilationConfig(cache_dir=cache))
    fn = torch.compile(model, backend=backend, dynamic=True)
    before = compilation_counter.num_inductor_compiles
    with torch.no_grad():
        for n in (1, 2):  # the graphs stitch compile --config makes
            kwargs = example_inputs("llama", 2, n, seed=n)
            kwargs["input_ids"] %= CHECKPOINT["vocab_size"]
            fn(**kwargs)
    return {
        "loaded_s": loaded,
        "compiled_s": compiled_at if worker else None,
        "first_s": time.perf_counter() - t0,
        "compiles": compilation_counter.num_inductor_compiles - before,
    }


def overlap_table() -> str:
    """A start that loads a checkpoint and compiles: one after the other, and
    with ``stitch compile --config`` beside the load."""
    from stitch.runtime.tables import markdown_table

    rows = []
    with tempfile.TemporaryDirectory(prefix="stitch-overlap-") as root:
        folder = os.path.join(root, "checkpoint")
        run_child("checkpoint", "save", 0, root, folder)
        for run in ("sequential", "overlap"):
            cache = os.path.join(root, run)
            os.makedirs(cache)
            print(f"  checkpoint: {run} ...", file=sys.stderr, flush=True)
            r = run_child("checkpoint", run, 0, cache, folder)
            rows.append(
                (
                    run,
                    f"{r['loaded_s']:.2f}",
                    "-" if r["compiled_s"] is None else f"{r['compiled_s']:.2f}",
                    f"{r['first_s']:.2f}",
                    str(r["compiles"]),
                )
            )
    headers = (
        "start",
        "weights loaded (s)",
        "stitch compile done (s)",
        "first output (s)",
        "Inductor compiles in the start",
    )
    return (
        "a checkpoint of 4 layers x 1024 (from_pretrained), its first forwards at "
        "1 and 2 tokens\n\n" + markdown_table(headers, rows, align="lrrrr")
    )


def run_child(
    kind: str, run: str, layers: int, cache: str, folder: str = ""
) -> dict[str, Any]:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=os.path.join(cache, "inductor"))
    command = [sys.executable, __file__, "--child", kind, run, str(layers), cache]
    command += ["--folder", folder] if folder else []
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} {run}: {done.stdout[-2000:]}{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT) :])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("KIND", "RUN", "LAYERS", "CACHE"))
    parser.add_argument("--folder", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, run, layers, cache = args.child
        if kind == "checkpoint":
            result = checkpoint_child(run, args.folder, cache)
        else:
            result = aot_child(run, int(layers), cache)
        print(RESULT + json.dumps(result), flush=True)
        return 0
    import torch

    print(
        f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n"
    )
    print(weightless_table(), "\n")
    print(overlap_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
