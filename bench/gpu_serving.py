"""Serving-shaped GPU benchmark: per-forward latency and host time, six ways.

Run on a CUDA machine: ``python bench/gpu_serving.py`` (``--help`` for options;
``scripts/gpu_check.sh`` runs it with the GPU tests).

A llama-like decoder (default about 1B parameters: 16 layers, hidden 2048,
intermediate 5632, vocabulary 32000, bf16, random weights,
decode attention over per-layer KV caches through ``stitch::attention``, the
Triton kernel on CUDA) runs at decode batch sizes 1, 8, 32, 128 and one prefill
size.  Side by side in one process, on the same model and inputs:

``eager``             the model as written
``compile``           ``torch.compile`` (Inductor, default options)
``compile-ro``        ``torch.compile`` with Inductor's CUDA graphs
                      (what ``mode="reduce-overhead"`` turns on)
``stitch-vllm``       Stitch PIECEWISE through the vLLM-style per-piece path:
                      split GraphModule forward, each piece a wrapper that looks
                      up a forward context and its own graph table
                      (bench/vllm_style.py)
``stitch-piecewise``  Stitch PIECEWISE with the dispatch hoisted into the emitted
                      function: one table lookup per forward, bare replays
``stitch-full``       Stitch FULL: one graph per size for the whole forward
``stitch-fp``         Stitch FULL_AND_PIECEWISE: full graphs up to ``--max-full``
                      tokens (decode batches), piecewise graphs above
``stitch-full-tuned`` Stitch FULL with ``--tuned-sizes`` compiled for themselves
                      under ``--tuned-options`` (``compile_sizes`` and
                      ``compile_sizes_inductor_config``; default max_autotune
                      and coordinate descent, as vLLM does for its sizes)
``stitch-full-pdl``   Stitch FULL with every Triton kernel launched with
                      programmatic dependent launch (``triton.enable_pdl``)
``stitch-full-copies`` Stitch FULL without Stitch's own passes: Inductor's folds
                      of the residual adds into addmm kept, with the two
                      device-to-device copies per layer they cost on CUDA (FULL
                      as it was before ``UnfuseResidualAddmm``)

The last three are not run unless named in ``--variants``: the tuned ones
compile for minutes more (``scripts/gpu_check.sh decode`` runs all three against
FULL and reduce-overhead).

Every variant is compiled and captured first; then ``--repeats`` repeats (5)
time each size of every variant in turn (NOTE: [the variants take turns],
gpu_serving_timing.py).  Per variant and size: the time per forward of forwards
issued back to back (CUDA events on a GPU, wall time on the CPU), min and median
over the repeats, beside the floor of a decode step: the bytes of the weights it
reads whole over the device's copy bandwidth, measured in the same run (a 1 GiB
copy on the device; 256 MiB on the CPU).  Then, pooled over the repeats:
latency (CUDA events around one forward, median) and host time (wall time of
one call, started on an idle GPU, so the launches never wait for it).  Per
variant: compile time, capture time and the memory the graphs reserved.

Host *overhead* is host time minus a floor: what the launches themselves cost
(one ``stitch::attention`` call per layer plus one graph replay per piece,
measured alone).  The targets of the CUDA-graph runtime are checked at the end:
hoisted PIECEWISE within 10% of FULL's latency at batch 1 and 8, and its host
overhead at least 3x below the vLLM-style path's.

All stitch variants and the ``torch.compile`` ones compile once, with the token
dimension marked dynamic and dynamo's guards dropped (as vLLM does), so no size
recompiles.  ``--device cpu --emulate`` runs the whole script on CPU with
emulated graphs (a dry run of the code paths; its times mean nothing).
``--device cpu --host-only`` measures host costs alone on CPU: graph replays
and the attention kernel do nothing, so what is left is the Python and
dispatch of each path (the floor is then the attention op's dispatch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from stitch.runtime.examples import LlamaConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_serving_model import (  # noqa: E402  (bench/, beside this file)
    CAPTURE_SIZES,
    DEFAULT_VARIANTS,
    DTYPES,
    VARIANTS,
    Prepared,
    Subject,
    example_subject,
    hf_subject,
    null_attention_kernel,
    prepare,
)
from gpu_serving_report import report  # noqa: E402
from gpu_serving_timing import (  # noqa: E402
    Clock,
    Plan,
    Samples,
    copy_bandwidth_gbs,
    launch_floor_us,
    measure_interleaved,
    weight_bytes,
)
from machine_facts import machine_facts  # noqa: E402


# -- the run -------------------------------------------------------------------------------
def measure_floors(
    subject: Subject,
    sizes: Sequence[int],
    args: argparse.Namespace,
    device: torch.device,
    clock: Clock,
) -> dict[str, Any]:
    """The floor of host time at each size, and the weight-read floor of a decode
    step (the device's copy bandwidth measured now)."""
    with torch.inference_mode():
        floors = {
            n: launch_floor_us(subject, n, device, clock, args.iters) for n in sizes
        }
    size = (1 << 30) if device.type == "cuda" else (256 << 20)
    bandwidth = copy_bandwidth_gbs(device, clock, max(20, args.iters // 10), size)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the copy's buffers back to the device
    weights = weight_bytes(subject.model)
    return {
        "floor": {
            n: {
                "attention_us": a,
                "replay_us": r,
                "attention_p10_us": a10,
                "replay_p10_us": r10,
            }
            for n, (a, r, a10, r10) in floors.items()
        },
        "read_floor": {
            "copy_bytes": size,
            "copy_gbs": bandwidth,
            "weight_bytes": weights,
            "floor_us": weights / (bandwidth * 1e9) * 1e6,
        },
    }


def prepare_all(
    subject: Subject,
    args: argparse.Namespace,
    device: torch.device,
    clock: Clock,
    results: dict[str, Any],
) -> dict[str, Prepared]:
    """Every variant compiled and captured, all alive at once (NOTE: [the
    variants take turns]); each one's costs recorded as it is ready."""
    prepared = {}
    t0 = time.perf_counter()
    for variant in args.variants:
        print(
            f"-- {variant} ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        with torch.no_grad():
            ready = prepare(variant, subject, args, device, clock)
        prepared[variant] = ready
        results["variants"][variant] = {
            "compile_s": ready.compile_s,
            "capture_s": ready.capture_s,
            "graph_mib": ready.graph_mib,
            "largest_mib": ready.largest_mib,
            "graphs": ready.graphs,
            "note": ready.note,
            "sizes": {},
        }
        save(results, args)  # what is ready so far survives a later failure
    return prepared


def measure(
    prepared: dict[str, Prepared],
    subject: Subject,
    sizes: Sequence[int],
    args: argparse.Namespace,
    clock: Clock,
    results: dict[str, Any],
) -> None:
    """Each size of every variant, in turn, ``args.repeats`` times; the rows
    of ``results`` are written (and saved) after each repeat."""
    plan = Plan(
        repeats=args.repeats,
        iters={
            n: args.iters if n <= max(args.decode) else max(10, args.iters // 10)
            for n in sizes
        },
        warmup=args.warmup,
    )
    inputs = {n: subject.inputs(n, 3) for n in sizes}
    t0 = time.perf_counter()

    def after_repeat(r: int, samples: dict[str, dict[int, Samples]]) -> None:
        print(
            f"-- repeat {r + 1} of {args.repeats} ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        for variant, by_size in samples.items():
            results["variants"][variant]["sizes"] = {
                n: s.row() for n, s in by_size.items()
            }
        save(results, args)

    forwards = {v: p.forward for v, p in prepared.items()}
    measure_interleaved(forwards, inputs, plan, clock, after_repeat)


def profile(
    prepared: Prepared,
    subject: Subject,
    variant: str,
    args: argparse.Namespace,
    device: torch.device,
) -> None:
    """Append torch.profiler's table of 20 forwards at batch 1 and 8 to ``args.profile``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    for n in (1, 8):
        inputs, kwargs = subject.inputs(n, 4)
        with torch.inference_mode():
            for _ in range(3):
                prepared.forward(*inputs, **kwargs)
            torch.cuda.synchronize() if device.type == "cuda" else None
            with torch_profile(activities=activities) as prof:
                for _ in range(20):
                    prepared.forward(*inputs, **kwargs)
                torch.cuda.synchronize() if device.type == "cuda" else None
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        with open(args.profile, "a", encoding="utf-8") as f:
            f.write(f"\n## {variant}, {n} tokens, 20 forwards\n\n{table}\n")


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    clock = Clock(device)
    keep = null_attention_kernel() if args.host_only else None
    sizes = args.decode + [args.prefill]
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_heads=args.heads,
        num_layers=args.layers,
        intermediate_size=args.intermediate,
        max_seqs=max(sizes),
        max_len=args.max_len,
        dtype=DTYPES[args.dtype],
    )
    subject = (hf_subject if args.model == "hf" else example_subject)(cfg, device)
    results: dict[str, Any] = {
        "machine": machine(device),
        "model": subject.description,
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "json")},
        "variants": {},
    }
    results.update(measure_floors(subject, sizes, args, device, clock))
    # Each compiled variant is one more entry in the cache of the model's
    # forward, and they all stay (NOTE: [the variants take turns]).
    with torch._dynamo.config.patch(recompile_limit=len(VARIANTS) + 8):
        prepared = prepare_all(subject, args, device, clock, results)
        measure(prepared, subject, sizes, args, clock, results)
        if args.profile:
            for variant, ready in prepared.items():
                profile(ready, subject, variant, args, device)
    del prepared, keep
    return results


def save(results: dict[str, Any], args: argparse.Namespace) -> None:
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(report(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=str)


def machine(device: torch.device) -> dict[str, str]:
    info = machine_facts(gpu=device.type == "cuda")
    if info.get("triton") == "missing":
        info["triton"] = "missing (attention runs the torch implementation)"
    return info


# -- command line --------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        choices=("example", "hf"),
        default="example",
        help="the example llama, or transformers' LlamaForCausalLM of the same shape "
        'with attn_implementation="stitch" in the token layout (needs stitch[hf])',
    )
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument(
        "--max-len", type=int, default=64, help="KV cache length per sequence"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument(
        "--decode", type=_ints, default=[1, 8, 32, 128], help="decode batch sizes"
    )
    parser.add_argument("--prefill", type=int, default=1024, help="prefill token count")
    parser.add_argument(
        "--capture-sizes",
        type=_ints,
        default=CAPTURE_SIZES,
        help="Stitch's cudagraph_capture_sizes (default vLLM's, 1 to 512; the "
        "prefill size stays above them)",
    )
    parser.add_argument(
        "--max-full",
        type=int,
        default=128,
        help="stitch-fp: full graphs up to this many tokens, piecewise above",
    )
    parser.add_argument(
        "--profile",
        help="append a torch.profiler table per variant at batch 1 and 8 to this file",
    )
    parser.add_argument(
        "--variants",
        type=lambda t: t.split(","),
        default=list(DEFAULT_VARIANTS),
        help=f"comma-separated, of {', '.join(VARIANTS)} (default: "
        f"{', '.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--tuned-sizes",
        type=_ints,
        default=[1, 8],
        help="stitch-full-tuned: the sizes compiled for themselves (compile_sizes)",
    )
    parser.add_argument(
        "--tuned-options",
        type=json.loads,
        default={"max_autotune": True, "coordinate_descent_tuning": True},
        help="stitch-full-tuned: their Inductor options, as JSON "
        "(compile_sizes_inductor_config)",
    )
    parser.add_argument(
        "--stitch-backend", choices=("inductor", "eager"), default="inductor"
    )
    parser.add_argument(
        "--iters",
        type=int,
        default=200,
        help="forwards timed per variant and decode size, each way, split over the "
        "repeats (the prefill a tenth, at least 10)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=20,
        help="forwards run first per variant and size, split over the repeats",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="the variants take turns this many times (min and median over them)",
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--emulate", action="store_true", help="emulated graphs (CPU dry run)"
    )
    parser.add_argument(
        "--host-only", action="store_true", help="CPU: no-op replays and attention"
    )
    parser.add_argument("--out", help="also write the markdown report here")
    parser.add_argument("--json", help="also write all numbers here")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.repeats < 1 or args.iters < 1 or args.warmup < 0:
        parser.error("--repeats and --iters must be at least 1, --warmup at least 0")
    if args.hidden % args.heads:
        parser.error("--hidden must be a multiple of --heads")
    if (args.emulate or args.host_only) and args.device != "cpu":
        parser.error("--emulate and --host-only are CPU modes (--device cpu)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: no CUDA device (use --device cpu --emulate for a dry run)",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    results = run(args)
    text = report(results)
    print(text)
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    save(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
