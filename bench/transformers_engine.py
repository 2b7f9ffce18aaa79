"""transformers' continuous batching, eager, with its own compile and through Stitch.

Usage::

    python bench/transformers_engine.py                  # 64 prompts of 16-512 tokens, 64 new
    python bench/transformers_engine.py --prompts 16 --new-tokens 16   # a quick look
    python bench/transformers_engine.py --device cuda    # the GPU table (below)
    python bench/transformers_engine.py --device cuda --dtype float32 --max-batch-tokens 64 \
        --decode-requests 0 --long-prompt 0 --runs eager,stitch,stitch+graphs  # tokens

Each run is a fresh process, one after the other in one invocation (side by
side): eager, the engine's own compile cold and warm, Stitch cold and warm.
What each column means is in the docstring of ``stitch.runtime.cli.engine_job``
(``stitch run --engine transformers`` prints the same table for a smaller
workload).  Results: docs/performance.md.

On a GPU (``--device cuda``) the model is a random-weight Llama of Llama 3.2
1B's shape in bfloat16, ``max_batch_tokens`` 2048, and one engine (a
persistent manager) per process serves every measurement, so that its CUDA
graphs are captured once, at its warm-up.  The runs: eager; eager in the
engine's CUDA graphs (its own graph path); the engine's compile in its CUDA
graphs, cold; Stitch cold and warm; Stitch warm in the engine's CUDA graphs
(NOTE: [the engine's CUDA graphs around Stitch's forward] in
runtime/hf/engine.py).  Beside the CPU table's columns, each run reports
decode tokens per second with ``--decode-requests`` (64) requests decoding
together (128-token prompts, 128 new tokens; counted from the moment every
request has its first token), and the time from a request's creation to the
first token of one ``--long-prompt`` (2,048) token prompt (median of 5 after
one warm-up).  A process of its own times a plain forward of the same model
over those 2,048 tokens through SDPA (FlashAttention on an H100;
``logits_to_keep=1``, as the engine keeps one logit; CUDA events, median of
10 after 3 warm-ups), the issue's reference for the long prompt.  The tokens
column compares every run's greedy tokens with eager's, position by position
(bfloat16 kernels differ: a share below 100% is expected, not a failure; the
cell counts the tokens that differ and the first step, 0 being the token
after the prompt, at which any request's differ).  Stitch's runs count the
Inductor compiles they ran (a warm process: none).  ``--dtype float32``
runs with TF32 off (the child sets it off and reports it), where the tokens
must equal eager's; ``--max-batch-tokens`` below the longest prompt chunks
its prefill beside other requests' decode steps; ``--decode-requests 0``
and ``--long-prompt 0`` leave out the decode and long-prompt measurements
(and the SDPA forward).  Under the table, each Stitch run's figures are set
against issue 60's targets, met or missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, TextIO

from engine_report import gpu_cells, gpu_targets

from stitch.runtime.cli.engine_job import (
    MODELS,
    Workload,
    batch_figures,
    build_model,
    engine_config,
    engine_fields,
    finished,
    greedy,
    prompts,
    run_engine_table,
    run_result,
)

RESULT = "STITCH_GPU_ENGINE_RESULT "
# (run, label): a run's cache folder is its variant's (before "+"), so the
# runs after a cold one of that variant are warm.
GPU_RUNS = (
    ("sdpa", "plain SDPA forward"),
    ("eager", "eager"),
    ("eager+graphs", "eager, engine's CUDA graphs"),
    ("engine+graphs", "engine compile + CUDA graphs, cold"),
    ("stitch", "stitch, cold"),
    ("stitch", "stitch, warm"),
    ("stitch+graphs", "stitch in the engine's CUDA graphs, warm"),
)


@dataclasses.dataclass(frozen=True)
class GpuWork:
    work: Workload
    decode_requests: int = 64
    decode_prompt: int = 128
    decode_tokens: int = 128
    long_prompt: int = 2048


def gpu_fields(gpu: GpuWork) -> dict[str, Any]:
    """The mixed workload's engine sizes, with room for the other two."""
    fields = engine_fields(gpu.work)
    page = fields["page_size"]
    decode = gpu.decode_requests * -(-(gpu.decode_prompt + gpu.decode_tokens) // page)
    long = -(-(gpu.long_prompt + 1) // page)
    fields["num_blocks"] = max(fields["num_blocks"], decode + 8, long + 8)
    # Sized by the first request otherwise (a persistent manager's hints).
    fields["max_requests_per_batch"] = max(gpu.work.prompts, gpu.decode_requests)
    return fields


def float32_exact(dtype: str) -> dict[str, Any]:
    """For float32, TF32 off in this process (issue 60's token check): what
    the child reports of it."""
    import torch

    if dtype != "float32":
        return {}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return {"tf32": torch.backends.cuda.matmul.allow_tf32}


def sdpa_forward(gpu: GpuWork) -> dict[str, Any]:
    """A plain forward over ``long_prompt`` tokens (CUDA events, milliseconds)."""
    import torch

    model = build_model(gpu.work)
    vocab = MODELS[gpu.work.shape]["vocab_size"]
    ids = torch.randint(3, vocab, (1, gpu.long_prompt), device=gpu.work.device)
    cuda = ids.device.type == "cuda"
    times = []
    with torch.no_grad():
        for i in range(13):
            if cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
            t0 = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            if cuda:
                end.record()
                torch.cuda.synchronize()
            ms = start.elapsed_time(end) if cuda else 1000 * (time.perf_counter() - t0)
            if i >= 3:
                times.append(ms)
    return {"forward_ms": statistics.median(times)}


def gpu_child(run: str, cache: str, gpu: GpuWork) -> dict[str, Any]:
    """One run in this process: every measurement on one persistent engine."""
    import torch

    exact = float32_exact(gpu.work.dtype)
    if run == "sdpa":
        return sdpa_forward(gpu)
    started = time.perf_counter()
    model = build_model(gpu.work)
    config = engine_config(run, cache, model, gpu_fields(gpu))

    def generate(inputs: list[list[int]], tokens: int) -> list[Any]:
        outputs = model.generate_batch(
            inputs,
            greedy(tokens),
            continuous_batching_config=config,
            record_timestamps=True,
            persistent_manager=True,
        )
        return finished(outputs, run, len(inputs))

    vocab = MODELS[gpu.work.shape]["vocab_size"]
    generator = torch.Generator().manual_seed(2)
    long = torch.randint(3, vocab, (gpu.long_prompt,), generator=generator).tolist()
    decode = [
        torch.randint(3, vocab, (gpu.decode_prompt,), generator=generator).tolist()
        for _ in range(gpu.decode_requests)
    ]
    batch = prompts(gpu.work)
    with torch.no_grad():
        generate([batch[0][:16]], 1)
        start = time.perf_counter() - started
        t0 = time.perf_counter()
        mixed = generate(batch, gpu.work.new_tokens)
        seconds = time.perf_counter() - t0
        decoded = generate(decode, gpu.decode_tokens) if decode else []
        long_ttft = []
        for _ in range(6 if gpu.long_prompt else 0):
            [first] = generate([long], 1)
            long_ttft.append(first.timestamps[0] - first.created_time)
    model.destroy_cached_continuous_batching_manager()
    out = {
        "start_s": start,
        **batch_figures(mixed, seconds),
        **exact,
        "tokens": [o.generated_tokens for o in mixed]
        + [o.generated_tokens for o in decoded],
    }
    if decoded:
        out["decode_tok_s"] = decode_rate(decoded)
    if long_ttft:
        out["long_ttft_ms"] = 1000 * statistics.median(long_ttft[1:])
    if run.startswith("stitch"):
        from stitch.runtime.counter import compilation_counter

        out["inductor_compiles"] = compilation_counter.num_inductor_compiles
    return out


def decode_rate(decoded: list[Any]) -> float:
    """Tokens per second from the moment every request has its first token."""
    since = max(o.timestamps[0] for o in decoded)
    until = max(o.timestamps[-1] for o in decoded)
    later = sum(sum(t > since for t in o.timestamps) for o in decoded)
    return later / (until - since) if until > since else 0.0


def run_gpu_child(run: str, cache: str, gpu: GpuWork) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", run, "--cache", cache]
    command += ["--gpu-work", json.dumps(dataclasses.asdict(gpu))]
    try:
        return run_result(command, cache, RESULT)
    except RuntimeError as exc:
        return {"error": str(exc)}


def brief(result: dict[str, Any]) -> str:
    """One run's figures on one line (its tokens left out)."""
    if "error" in result:
        return "failed: " + result["error"].strip().splitlines()[-1][:300]
    return ", ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in result.items()
        if key != "tokens"
    )


def environment() -> str:
    import torch
    import transformers
    from machine_facts import machine_facts, triton_version  # bench/, beside this file

    facts = machine_facts(gpu=torch.cuda.is_available())
    return (
        f"{facts.get('gpu', 'no GPU')}, driver {facts.get('driver', '?')}, torch "
        f"{facts['torch']} (CUDA {torch.version.cuda}), Triton {triton_version()}, "
        f"transformers {transformers.__version__}"
    )


def run_gpu_table(gpu: GpuWork, runs: list[str], out: TextIO) -> int:
    """Every run of :data:`GPU_RUNS` named in ``runs``, then the table and the
    targets; 1 when one failed."""
    from stitch.runtime.tables import markdown_table

    print(f"transformers' continuous batching on {environment()}", file=out, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="stitch-gpu-engine-") as root:
        for run, label in GPU_RUNS:
            if run not in runs:
                continue
            cache = os.path.join(root, run.partition("+")[0])
            os.makedirs(cache, exist_ok=True)
            print(f"  {label} ...", file=out, flush=True)
            rows.append((run, label, run_gpu_child(run, cache, gpu)))
            # Each run's figures as it ends: a part stopped at its limit keeps them.
            print(f"    {brief(rows[-1][2])}", file=out, flush=True)
    forward = next((r for run, _, r in rows if run == "sdpa"), {})
    eager = next((r for run, _, r in rows if run == "eager"), {})
    cells, failed = [], []
    for run, label, r in rows:
        if "error" in r:
            failed.append(f"{label}:\n{r['error']}")
            cells.append((label, *["failed"] * 8))
        elif run == "sdpa":
            cells.append(
                (label, "", "", "", "", f"{r['forward_ms']:.1f}", "1.00x", "", "")
            )
        else:
            cells.append(gpu_cells(label, r, forward, eager))
    work = gpu.work
    tf32 = next((r["tf32"] for _, _, r in rows if "tf32" in r), None)
    print(
        f"\nLlama {work.shape} ({MODELS[work.shape]['num_hidden_layers']} layers x "
        f"{MODELS[work.shape]['hidden_size']}), {work.dtype}"
        + ("" if tf32 is None else f" (TF32 {'on' if tf32 else 'off'})")
        + f"; mixed: {work.describe()}, max_batch_tokens {work.max_batch_tokens}; "
        + (
            f"decode: {gpu.decode_requests} requests of {gpu.decode_prompt} tokens, "
            f"{gpu.decode_tokens} new; "
            if gpu.decode_requests
            else ""
        )
        + (f"long: one {gpu.long_prompt}-token prompt" if gpu.long_prompt else "")
        + "\n",
        file=out,
    )
    headers = (
        "run",
        "start (s)",
        "ttft median (s)",
        "tok/s",
        f"decode tok/s ({gpu.decode_requests or 'no'} requests)",
        (
            f"{gpu.long_prompt}-token ttft (ms)"
            if gpu.long_prompt
            else "long-prompt ttft (ms)"
        ),
        "vs SDPA forward",
        "tokens",
        "Inductor compiles",
    )
    print(markdown_table(headers, cells, align="lrrrrrrlr"), file=out)
    print("\n" + "\n".join(gpu_targets(rows, work.dtype)), file=out)
    for text in failed:
        print(f"\n{text}", file=out)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--shortest", type=int, default=16)
    parser.add_argument("--longest", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default=None, help="tiny or 1b (1b on a GPU)")
    parser.add_argument(
        "--dtype", default=None, help="bfloat16 on a GPU, float32 on the CPU"
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="the engine's (default: the long prompt, at least 256)",
    )
    parser.add_argument(
        "--decode-requests", type=int, default=64, help="0: no decode measurement"
    )
    parser.add_argument(
        "--long-prompt", type=int, default=2048, help="0: no long-prompt measurement"
    )
    parser.add_argument(
        "--runs", default=",".join(dict(GPU_RUNS)), help="the GPU table's runs"
    )
    parser.add_argument(
        "--table",
        choices=("default", "gpu"),
        default="default",
        help="gpu: the GPU table on any device (a quick check of it on CPU)",
    )
    parser.add_argument("--out", help="also write the GPU table to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fields = json.loads(args.gpu_work)
        gpu = GpuWork(Workload(**fields.pop("work")), **fields)
        result = gpu_child(args.child, args.cache, gpu)
        print(RESULT + json.dumps(result), flush=True)
        return 0
    sizes = (args.prompts, args.shortest, args.longest, args.new_tokens)
    if args.device == "cpu" and args.table == "default":
        return run_engine_table(Workload(*sizes), sys.stdout)
    cuda = args.device.startswith("cuda")
    work = Workload(
        *sizes,
        shape=args.shape or ("1b" if cuda else "tiny"),
        device=args.device,
        dtype=args.dtype or ("bfloat16" if cuda else "float32"),
        max_batch_tokens=args.max_batch_tokens or max(args.long_prompt, 256),
    )
    gpu = GpuWork(work, args.decode_requests, long_prompt=args.long_prompt)
    runs = args.runs.split(",")
    if not args.long_prompt:
        runs = [r for r in runs if r != "sdpa"]  # its reference is the long prompt
    if not args.out:
        return run_gpu_table(gpu, runs, sys.stdout)
    text = io.StringIO()
    code = run_gpu_table(gpu, runs, Tee(sys.stdout, text))
    with open(args.out, "w") as f:
        f.write(text.getvalue())
    return code


class Tee:
    """Print to the terminal and keep a copy (the ``--out`` file)."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


if __name__ == "__main__":
    sys.exit(main())
