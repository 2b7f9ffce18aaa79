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

The last two are not run unless named in ``--variants``: their compiles take
minutes more (``scripts/gpu_check.sh decode`` runs them against FULL).

Per variant and size: latency (CUDA events around one forward, median), host
time (wall time of one call, started on an idle GPU, so the launches never wait
for it), and the time per forward of back-to-back forwards.  Per variant: compile
time, capture time and the memory the graphs reserved.  On a GPU, the run also
measures the device's copy bandwidth (a 1 GiB device-to-device copy) and states
the floor of a decode step: the bytes of the weights it reads whole over that
bandwidth.

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
import gc
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
    Clock,
    Prepared,
    Subject,
    example_subject,
    hf_subject,
    null_attention_kernel,
    prepare,
)
from gpu_serving_report import (  # noqa: E402
    report,
)
from machine_facts import machine_facts  # noqa: E402


# -- the floor of host time ---------------------------------------------------------------------
def launch_floor_us(
    subject: Subject, n: int, device: torch.device, clock: Clock, iters: int
) -> tuple[float, float, float, float]:
    """Host µs of one attention call at ``n`` tokens and of one graph replay
    (medians, then 10th percentiles).

    Each is timed as a forward issues it: one call per layer in a row (from an
    idle GPU), divided by the number of layers.
    """
    layers = list(zip(subject.caches[::2], subject.caches[1::2], strict=True))
    q = torch.randn(
        n, subject.heads, subject.head_dim, device=device, dtype=subject.dtype
    )
    out = torch.empty_like(q)
    positions = torch.zeros(n, dtype=torch.int64, device=device)

    def attention() -> None:
        for k_cache, v_cache in layers:
            torch.ops.stitch.attention(q, q, q, k_cache, v_cache, positions, out, 0.1)

    with torch.inference_mode():
        attention()
        median, p10 = clock.host_us(attention, iters)
        attention_us, attention_p10 = median / len(layers), p10 / len(layers)
    replay_us = replay_p10 = 0.0
    if device.type == "cuda":
        x = torch.randn(n, subject.hidden, device=device, dtype=subject.dtype)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = (x * 2).sin() + 1
        del y

        def replays() -> None:
            for _ in range(len(layers) + 1):
                graph.replay()

        median, p10 = clock.host_us(replays, iters)
        replay_us, replay_p10 = median / (len(layers) + 1), p10 / (len(layers) + 1)
    return attention_us, replay_us, attention_p10, replay_p10


# -- the floor of a decode step ---------------------------------------------------------------
def weight_bytes(model: torch.nn.Module) -> int:
    """The bytes of the weights one decode step reads whole: every parameter once
    (tied ones too), but an embedding table that no linear layer also uses (a
    step reads only its tokens' rows of it)."""
    embeddings = {
        id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)
    }
    linears = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    return sum(
        p.numel() * p.element_size()
        for p in model.parameters()
        if id(p) not in embeddings or id(p) in linears
    )


def copy_bandwidth_gbs(device: torch.device, clock: Clock, iters: int) -> float:
    """The device's copy bandwidth in GB/s: bytes read plus bytes written by a
    1 GiB device-to-device copy, over its median time (CUDA events)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    seconds = clock.latency_us(lambda: dst.copy_(src), iters) / 1e6
    return 2 * (1 << 30) / seconds / 1e9


# -- the run -------------------------------------------------------------------------------
def measure(
    prepared: Prepared,
    subject: Subject,
    sizes: Sequence[int],
    args: argparse.Namespace,
    device: torch.device,
    clock: Clock,
) -> dict[int, dict[str, float]]:
    rows = {}
    for n in sizes:
        inputs, kwargs = subject.inputs(n, 3)
        iters = args.iters if n <= max(args.decode) else max(10, args.iters // 10)

        def forward(inputs: Any = inputs, kwargs: Any = kwargs) -> Any:
            return prepared.forward(*inputs, **kwargs)

        with torch.inference_mode():
            for _ in range(args.warmup):
                forward()
            latency = clock.latency_us(forward, iters)
            host, host_p10 = clock.host_us(forward, iters)
            rows[n] = {
                "latency_us": latency,
                "host_us": host,
                "host_p10_us": host_p10,
                "back_to_back_us": clock.back_to_back_us(forward, iters),
            }
    return rows


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
    with torch.inference_mode():
        floors = {
            n: launch_floor_us(subject, n, device, clock, args.iters) for n in sizes
        }
    results["floor"] = {
        n: {
            "attention_us": a,
            "replay_us": r,
            "attention_p10_us": a10,
            "replay_p10_us": r10,
        }
        for n, (a, r, a10, r10) in floors.items()
    }
    if device.type == "cuda":
        bandwidth = copy_bandwidth_gbs(device, clock, max(20, args.iters // 10))
        torch.cuda.empty_cache()  # the copy's 2 GiB back to the device
        weights = weight_bytes(subject.model)
        results["read_floor"] = {
            "copy_gbs": bandwidth,
            "weight_bytes": weights,
            "floor_us": weights / (bandwidth * 1e9) * 1e6,
        }
    t0 = time.perf_counter()
    for variant in args.variants:
        print(
            f"-- {variant} ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        with torch.no_grad():
            prepared = prepare(variant, subject, args, device, clock)
        rows = measure(prepared, subject, sizes, args, device, clock)
        if args.profile:
            profile(prepared, subject, variant, args, device)
        results["variants"][variant] = {
            "compile_s": prepared.compile_s,
            "capture_s": prepared.capture_s,
            "graph_mib": prepared.graph_mib,
            "largest_mib": prepared.largest_mib,
            "graphs": prepared.graphs,
            "note": prepared.note,
            "sizes": rows,
        }
        del prepared
        save(results, args)  # what is measured so far survives a later failure
        torch._dynamo.reset()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    del keep
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
        help=f"comma-separated, of {', '.join(VARIANTS)} (default: all but the "
        "last two)",
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
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
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
