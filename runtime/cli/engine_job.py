"""``stitch run --engine transformers``: transformers' continuous batching, eager,
with its own compile and through Stitch, side by side.

Each run is a fresh process (``python -m stitch.runtime.cli.engine_job --child``),
one after the other: ``eager`` (the engine's paged SDPA, no compile),
``engine`` (its own compile, ``default_compile_level=1``: Inductor, the graph
broken at every layer's cache update), ``stitch`` (the model's call in each
step as one graph split at ``stitch::paged_attention``, saved: NOTE:
[transformers' engine under Stitch] in runtime/hf/engine.py).  ``engine`` and
``stitch`` run twice on one cache folder, cold then warm (Inductor's FX graph
cache for ``engine``, whose warm process still traces the step; Stitch's saved
forward for ``stitch``, which a warm process loads without Dynamo).  Per run:

- start: from the process's first line to the first token of one short
  request (model build, the engine's start, every compile or cache load);
- ttft: the median over the requests, submitted together, of the time from a
  request's creation to its first token;
- tok/s: generated tokens over the batch's wall time.

The model is a random-weight Llama built from a small config (no download),
float32 and seeded, so every process generates the same greedy tokens; the
table says whether they did.  ``bench/transformers_engine.py`` runs the
issue's workload (64 prompts of 16-512 tokens, 64 new tokens each).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, TextIO

from ..harness.marked_result import marked_result, print_marked

STARTED = time.perf_counter()
RESULT = "STITCH_ENGINE_RESULT "

LLAMA = dict(
    vocab_size=8192,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)
# Llama 3.2 1B's shape (1.24 B parameters), for the GPU benchmark.
LLAMA_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=4096,
    rope_theta=500000.0,
    tie_word_embeddings=True,
)
MODELS = {"tiny": LLAMA, "1b": LLAMA_1B}
# (variant, label): each run in its own process; the second of a variant is warm.
RUNS = (
    ("eager", "eager"),
    ("engine", "engine compile, cold"),
    ("engine", "engine compile, warm"),
    ("stitch", "stitch, cold"),
    ("stitch", "stitch, warm"),
)


@dataclasses.dataclass(frozen=True)
class Workload:
    prompts: int = 64
    shortest: int = 16
    longest: int = 512
    new_tokens: int = 64
    # The model (a key of MODELS) and where it runs.
    shape: str = "tiny"
    device: str = "cpu"
    dtype: str = "float32"
    max_batch_tokens: int = 256

    def describe(self) -> str:
        return (
            f"{self.prompts} prompts of {self.shortest}-{self.longest} tokens, "
            f"{self.new_tokens} new tokens each"
        )


def engine_fields(work: Workload) -> dict[str, Any]:
    """The engine's cache and batch sizes: every request fits at once."""
    page = 16
    pages = work.prompts * -(-(work.longest + work.new_tokens) // page)
    return dict(
        num_blocks=pages + 8, page_size=page, max_batch_tokens=work.max_batch_tokens
    )


def build_model(work: Workload) -> Any:
    """The seeded random-weight Llama of ``work.shape``, on its device and dtype."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(work.device):
        model = LlamaForCausalLM._from_config(
            LlamaConfig(**MODELS[work.shape]),
            attn_implementation="sdpa",
            dtype=getattr(torch, work.dtype),
        )
    return model.eval()


def prompts(work: Workload) -> list[list[int]]:
    """``work.prompts`` prompts of ``shortest`` to ``longest`` tokens (seeded)."""
    import torch

    vocab = MODELS[work.shape]["vocab_size"]
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(
        work.shortest, work.longest + 1, (work.prompts,), generator=generator
    ).tolist()
    return [
        torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths
    ]


def engine_config(run: str, cache: str, model: Any, fields: dict[str, Any]) -> Any:
    """The engine's config for one run: ``eager``, ``engine`` (its own compile)
    or ``stitch``, each with ``+graphs`` for the engine's CUDA graphs."""
    from transformers import ContinuousBatchingConfig

    from stitch.runtime.hf.engine_compat import config_fields

    variant, _, graphs = run.partition("+")
    fields = dict(fields, use_cuda_graph=graphs == "graphs")
    if variant == "stitch":
        from stitch.runtime import CompilationConfig, StitchBackend
        from stitch.runtime.hf import continuous_batching_config

        # "stitch, cold" times a start that compiles first (no tiered start).
        backend = StitchBackend(CompilationConfig(cache_dir=cache, tiered_start=False))
        return continuous_batching_config(model, backend, **fields)
    return ContinuousBatchingConfig(
        **config_fields(
            dict(
                fields,
                default_compile_level=1 if variant == "engine" else 0,
                max_blocks_per_request=0,
                auto_switch_to_flash=False,
            )
        )
    )


def greedy(tokens: int) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=tokens, do_sample=False, eos_token_id=-1, pad_token_id=0
    )


def child(variant: str, cache: str, work: Workload) -> dict[str, Any]:
    """One run, in this process (a fresh one: see :func:`measure`)."""
    import torch

    model = build_model(work)
    batch = prompts(work)
    config = engine_config(variant, cache, model, engine_fields(work))
    with torch.no_grad():
        model.generate_batch(
            [batch[0][:16]], greedy(1), continuous_batching_config=config
        )
        start = time.perf_counter() - STARTED
        t0 = time.perf_counter()
        outputs = model.generate_batch(
            batch,
            greedy(work.new_tokens),
            continuous_batching_config=config,
            record_timestamps=True,
        )
        seconds = time.perf_counter() - t0
    results = finished(outputs, variant, len(batch))
    return {
        "start_s": start,
        **batch_figures(results, seconds),
        "tokens": [
            o.generated_tokens for o in sorted(results, key=lambda o: o.prompt_ids)
        ],
        "prefill_tokens": sum(len(p) for p in batch),
    }


def finished(outputs: dict[str, Any], run: str, requests: int) -> list[Any]:
    """``generate_batch``'s outputs, in the inputs' order; exits when a request failed."""
    results = list(outputs.values())
    errors = [o.error for o in results if o.error]
    if errors or len(results) != requests:
        raise SystemExit(
            f"{run}: {len(errors)} of {requests} requests failed, "
            f"{requests - len(results)} missing: {errors[:1]}"
        )
    return results


def batch_figures(results: list[Any], seconds: float) -> dict[str, float]:
    """Time to the first token (median over the requests) and tokens per second."""
    return {
        "ttft_s": statistics.median(o.timestamps[0] - o.created_time for o in results),
        "tok_s": sum(len(o.generated_tokens) for o in results) / seconds,
    }


def run_result(command: list[str], cache: str, marker: str) -> dict[str, Any]:
    """Run a child process with Inductor's cache in ``cache``; the JSON it printed
    after ``marker``.  RuntimeError with its output's tail when it printed none."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=os.path.join(cache, "inductor"))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    result = marked_result(done.stdout, marker)
    if done.returncode != 0 or result is None:
        raise RuntimeError(f"{done.stdout[-3000:]}{done.stderr[-3000:]}".strip())
    return result


def run_child(variant: str, cache: str, work: Workload) -> dict[str, Any]:
    command = [sys.executable, "-m", __name__, "--child", variant, "--cache", cache]
    command += ["--work", json.dumps(dataclasses.asdict(work))]
    try:
        return run_result(command, cache, RESULT)
    except RuntimeError as exc:
        raise RuntimeError(f"{variant} failed:\n{exc}") from None


def measure(work: Workload, out: TextIO) -> list[tuple[str, dict[str, Any]]]:
    """Every run of :data:`RUNS`, one after the other, each in a fresh process."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="stitch-engine-") as root:
        for variant, label in RUNS:
            cache = os.path.join(root, variant)
            os.makedirs(cache, exist_ok=True)
            print(f"  {label} ...", file=out, flush=True)
            rows.append((label, run_child(variant, cache, work)))
    return rows


def format_table(rows: list[tuple[str, dict[str, Any]]], work: Workload) -> str:
    # Imported here: the child processes import this module too, and print none.
    from stitch.runtime.tables import markdown_table

    eager = rows[0][1]
    lines = [
        f"{work.describe()} ({eager['prefill_tokens']} prompt tokens); Llama "
        f"{LLAMA['num_hidden_layers']} layers x {LLAMA['hidden_size']}, float32, "
        f"CPU ({os.cpu_count()} cores)",
        "",
    ]
    cells = [
        (
            label,
            f"{r['start_s']:.1f}",
            f"{r['ttft_s']:.2f}",
            f"{r['tok_s']:.1f}",
            f"{r['tok_s'] / eager['tok_s']:.2f}x",
            "= eager" if r["tokens"] == eager["tokens"] else "DIFFER",
        )
        for label, r in rows
    ]
    headers = ("run", "start (s)", "ttft median (s)", "tok/s", "vs eager", "tokens")
    lines.append(markdown_table(headers, cells, align="lrrrrl"))
    return "\n".join(lines)


def run_engine_table(work: Workload, out: TextIO) -> int:
    """Measure, print the table; 1 when a run's tokens differ from eager's."""
    print(f"transformers' continuous batching: {work.describe()}", file=out)
    rows = measure(work, out)
    print(file=out)
    print(format_table(rows, work), file=out)
    eager = rows[0][1]["tokens"]
    wrong = [label for label, r in rows if r["tokens"] != eager]
    if wrong:
        print(f"tokens differ from eager: {', '.join(wrong)}", file=out)
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--work", required=True)
    args = parser.parse_args(argv)
    result = child(args.child, args.cache, Workload(**json.loads(args.work)))
    print_marked(RESULT, result)


if __name__ == "__main__":
    main()
