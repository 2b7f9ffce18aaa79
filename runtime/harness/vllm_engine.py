"""Run vLLM's real engine on a tiny saved checkpoint, one variant per process.

The tests, ``stitch run --vllm`` and ``bench/vllm_engine.py`` all start each
engine with ``python -m stitch.runtime.harness.vllm_engine`` (vLLM spawns workers, so
the engine needs a fresh ``__main__``) and read one JSON line back: the start
time, request times, tokens, log-probabilities and the worker's compile
counters.

NOTE: [realistic weights]
``load_format="dummy"`` fills every weight uniformly in [-1e-3, 1e-3], which
makes all logits about equal: the greedy token is then decided by rounding
noise and equal tokens prove nothing.  So the checkpoint is a randomly
initialized transformers model (normal(0, 0.02), transformers' own init)
written with ``save_pretrained``, which vLLM loads like any real checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from .marked_result import print_marked

VARIANTS = {
    # vLLM without torch.compile.
    "eager": None,
    # vLLM's default compile (on CPU: mode 2, whole-graph Inductor).
    "vllm": {},
    # Stitch, split at vLLM's attention and mixer ops, every piece compiled
    # before the engine serves (tiered_start off).
    "stitch": {"mode": 2, "backend": "stitch.runtime.vllm.backend"},
    # vLLM's piecewise compile with its eager backend: Dynamo and the split alone.
    "dynamo": {"mode": 2, "backend": "eager"},
    # Stitch with its default, a tiered start (NOTE: [a tiered start]; NOTE:
    # [where a tiered start is the default]): serves on uncompiled pieces
    # while compile workers build them.
    "tiered": {"mode": 2, "backend": "stitch.runtime.vllm.backend"},
}

# How long the tiered variant serves requests, at most, for its pieces to land.
# Its workers give way to the requests (NOTE: [serving first]): on a quiet
# 2-core machine the last swap came 88-92 s into the backend call (46 s with
# the workers as equals); beside CI's other suites it may take several times that.
SETTLE_S = 600.0

ENGINE_ENV = {
    # Small KV cache, for 2-core machines with little memory per engineer.
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # The counters are read from the worker through a callable (collective_rpc).
    "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",
}


def save_checkpoint(folder: str, family: str = "llama", layers: int = 8) -> str:
    """A tiny random-weight ``family`` model saved with ``save_pretrained``."""
    import torch
    import transformers

    torch.manual_seed(0)
    common = dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=32000,
        max_position_embeddings=1024,
        torch_dtype="float32",
    )
    if family == "llama":
        cfg = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(cfg)
    elif family == "mixtral":
        cfg = transformers.MixtralConfig(
            **common, num_local_experts=4, num_experts_per_tok=2
        )
        model = transformers.MixtralForCausalLM(cfg)
    else:
        raise ValueError(f"no tiny checkpoint for family {family!r}")
    # NOTE: [logits of a trained model's spread]
    # normal(0, 0.02) over hidden 256 spreads the logits by about 0.3, so the
    # top two tokens are often within float noise of each other; trained models
    # spread theirs over several units.  A larger output projection gives the
    # greedy choice a margin that a correct compile cannot flip.
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    model.save_pretrained(folder)
    return folder


def prompts(batch: int, length: int = 16, seed: int = 0) -> list[list[int]]:
    """``batch`` prompts of ``length`` token ids, the same in every process."""
    import random

    rng = random.Random(seed)
    return [[rng.randrange(1, 32000) for _ in range(length)] for _ in range(batch)]


def _worker_tiers(worker: Any = None) -> list[dict[str, Any]]:
    """Run inside vLLM's worker: the timeline of each tiered start there, with
    whether it is settled (every piece swapped in or given up)."""
    import gc

    from stitch.runtime.pipeline.tiered.controls import Tier

    tiers = [o for o in gc.get_objects() if type(o) is Tier]  # not a weakproxy
    return [dict(t.timeline(), settled=t.settled) for t in tiers]


def _serve_until_settled(
    llm: Any, generate: Any, busy: float, first: list[list[int]]
) -> dict[str, Any]:
    """One-prompt requests until every piece of the worker's tiered starts has
    been swapped in or given up: their tokens (``first``'s, the engine's first
    request's where it began before that), and the timelines.  Each request
    of t seconds is followed by t * (1 / ``busy`` - 1) idle (``busy`` 1: back
    to back, but for a look at the tiers)."""
    tokens = list(first)
    deadline = time.monotonic() + SETTLE_S
    while True:
        tiers = llm.collective_rpc(_worker_tiers)[0]
        if all(t["settled"] for t in tiers) or time.monotonic() > deadline:
            break
        seconds, outs = generate(1)
        tokens.append(list(outs[0].outputs[0].token_ids))
        time.sleep(max(0.05, seconds * (1 / busy - 1)))
    return {"tokens_meanwhile": tokens, "tiers": tiers, "busy": busy}


def _worker_counters(worker: Any = None) -> dict[str, Any]:
    """Run inside vLLM's worker: what Dynamo, Inductor, vLLM and Stitch did there."""
    from vllm.compilation.counter import compilation_counter as vllm_counter

    from stitch.runtime.compat.dynamo import dynamo_counters
    from stitch.runtime.counter import compilation_counter

    counters = dynamo_counters()
    return {
        # Frames Dynamo converted on call (torch.compile'd helpers); a model
        # traced through aot_compile counts in unique_graphs only.
        "dynamo_frames": int(counters["frames"]["total"]),
        "dynamo_graphs": int(counters["stats"]["unique_graphs"]),
        "inductor": {k: int(v) for k, v in counters["inductor"].items()},
        "vllm_aot_loaded": vllm_counter.num_aot_artifacts_loaded,
        "vllm_aot_compiles": vllm_counter.num_aot_compiles,
        "stitch": compilation_counter.snapshot(),
    }


def _first_request(
    llm: Any, generate: Any, tiered: bool
) -> tuple[float, list[list[int]]]:
    """The engine's first request: its seconds, and its tokens where a tiered
    start was still unsettled when it began.  It counts as served while the
    pieces compile: a fast compile can settle during it (seconds on
    uncompiled pieces, its forwards waiting at the compile's share)."""
    unsettled = tiered and not all(
        t["settled"] for t in llm.collective_rpc(_worker_tiers)[0]
    )
    seconds, outs = generate(1)
    return seconds, [list(outs[0].outputs[0].token_ids)] if unsettled else []


def run(
    model: str,
    variant: str,
    batches: list[int],
    max_tokens: int,
    rounds: int = 1,
    backend: str | None = None,
    busy: float = 1.0,
) -> dict[str, Any]:
    """Start one engine, time requests of each batch size; see NOTE above for weights.

    ``backend``: the name the ``stitch`` variant gives vLLM for Stitch's backend
    (the README's names: ``stitch.runtime.vllm.backend``, ``stitch_vllm``, or a
    ``backend_with`` object's qualified name)."""
    for name, value in ENGINE_ENV.items():
        os.environ.setdefault(name, value)
    if variant in ("stitch", "tiered"):
        _tiered_or_not(variant == "tiered")
    start = time.perf_counter()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kwargs: dict[str, Any] = dict(
        model=model,
        skip_tokenizer_init=True,
        dtype="float32",
        gpu_memory_utilization=0.2,
        max_model_len=512,
        seed=0,
    )
    if VARIANTS[variant] is None:
        kwargs["enforce_eager"] = True
    else:
        kwargs["compilation_config"] = dict(VARIANTS[variant])
        if backend and variant in ("stitch", "tiered"):
            kwargs["compilation_config"]["backend"] = backend
    llm = LLM(**kwargs)
    started = time.perf_counter() - start
    params = SamplingParams(
        temperature=0.0, max_tokens=max_tokens, ignore_eos=True, logprobs=0
    )

    def generate(batch: int) -> tuple[float, list[Any]]:
        reqs = [TokensPrompt(prompt_token_ids=p) for p in prompts(batch)]
        t0 = time.perf_counter()
        outs = llm.generate(reqs, params, use_tqdm=False)
        return time.perf_counter() - t0, outs

    first, first_tokens = _first_request(llm, generate, variant == "tiered")
    result: dict[str, Any] = {
        "variant": variant,
        "start_s": started,
        "first_request_s": first,
        "seconds": {},
        "tokens": {},
        "logprobs": {},
    }
    if variant == "tiered":
        result.update(_serve_until_settled(llm, generate, busy, first_tokens))
        result["settled_s"] = time.perf_counter() - start
    for batch in batches:
        times = []
        for _ in range(rounds):
            seconds, outs = generate(batch)
            times.append(seconds)
        result["seconds"][str(batch)] = statistics.median(times)
        result["tokens"][str(batch)] = [list(o.outputs[0].token_ids) for o in outs]
        result["logprobs"][str(batch)] = [
            [
                lp[t].logprob
                for t, lp in zip(
                    o.outputs[0].token_ids, o.outputs[0].logprobs, strict=False
                )
            ]
            for o in outs
        ]
    result["counters"] = llm.collective_rpc(_worker_counters)[0]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="folder of a saved checkpoint")
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--save", metavar="FAMILY", help="first save a checkpoint")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--backend", help="the stitch variant's backend name")
    parser.add_argument(
        "--busy",
        type=busy_share,
        default=1.0,
        help="the share of the time the tiered variant's requests keep the "
        "engine busy while its pieces land (1: back to back)",
    )
    args = parser.parse_args(argv)
    if args.save:
        save_checkpoint(args.model, args.save, args.layers)
    batches = [int(b) for b in args.batches.split(",") if b]
    result = run(
        args.model,
        args.variant,
        batches,
        args.max_tokens,
        args.rounds,
        args.backend,
        args.busy,
    )
    sys.stdout.flush()
    print_marked("STITCH_VLLM_RESULT ", result)


def busy_share(text: str) -> float:
    """``--busy``'s value: a share of the time, above 0 and at most 1."""
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a share of the time in (0, 1]"
        )
    return share


def _tiered_or_not(tiered: bool) -> None:
    """The Stitch variants' fields in $STITCH_VLLM_CONFIG: ``stitch`` compiles
    every piece before the engine serves; ``tiered`` runs on the default, a
    tiered start (NOTE: [where a tiered start is the default]), whatever a
    test suite's $STITCH_TIERED_START says."""
    from stitch.runtime.pipeline.tiered.controls import TIERED_DEFAULT_ENV
    from stitch.runtime.vllm.config_from_vllm import CONFIG_ENV

    fields = json.loads(os.environ.get(CONFIG_ENV) or "{}")
    if tiered:
        fields.pop("tiered_start", None)
        os.environ.pop(TIERED_DEFAULT_ENV, None)
    else:
        fields["tiered_start"] = False
    os.environ[CONFIG_ENV] = json.dumps(fields)


if __name__ == "__main__":
    main()
