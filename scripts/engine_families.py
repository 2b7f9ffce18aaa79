"""transformers' continuous batching through Stitch, family by family.

Run: ``python scripts/engine_families.py [FAMILY ...]`` (needs ``pip install -e
'.[hf]'``; every family of :data:`FAMILIES` when none is named).

Each family is a tiny random-weight causal LM built from a config (2 layers,
hidden size 64, no download), with SDPA where transformers has it and eager
attention otherwise.  Four prompts of 2-17 tokens, 8 greedy tokens each, go
through ``generate_batch`` twice, as tests/test_hf_engine.py does: transformers'
own engine, eager, and the engine with Stitch (``continuous_batching_config``).
One fresh process per family; the table says whether the tokens are equal and
the largest difference of their log-probabilities, or the error of each run.
A family transformers' own engine fails on is compared with the model's own
greedy ``generate`` instead (tokens only).  Not part of the test suite: about 15-40 s a family on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

SMALL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=256,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# Each family's fields over SMALL's (None: leave SMALL's out).
MOE = dict(num_experts_per_tok=2)
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {"sliding_window": 8},
    "ministral": {},
    "qwen2": {},
    "qwen3": {},
    "qwen2_moe": dict(
        MOE, moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4
    ),
    "qwen3_moe": dict(MOE, moe_intermediate_size=32, num_experts=4),
    "mixtral": dict(MOE, num_local_experts=4),
    "olmoe": dict(MOE, num_experts=4),
    "granitemoe": dict(MOE, num_local_experts=4),
    "phi": {},
    "phi3": {},
    "gemma": {},
    "gemma2": {"sliding_window": 8, "attn_logit_softcapping": 0.5},
    "gemma3_text": {
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention"],
    },
    "gpt_oss": dict(MOE, num_local_experts=4, sliding_window=8),
    "olmo": {},
    "olmo2": {},
    "granite": {},
    "cohere": {},
    "cohere2": {
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention"],
    },
    "starcoder2": {},
    "glm": {},
    "glm4": {},
    "helium": {},
    "smollm3": {},
    "exaone4": {},
    "seed_oss": {},
    "arcee": {},
    "apertus": {},
    # Multi-head only, or a head size of their own: no GQA fields.
    "gpt2": {"num_key_value_heads": None, "head_dim": None},
    "gpt_neox": {"num_key_value_heads": None, "head_dim": None},
    # Attention in their own code: refused by name.
    "bloom": {"num_key_value_heads": None, "head_dim": None},
}

_CHILD = r"""
import json, sys, tempfile, warnings
warnings.filterwarnings("ignore")
import torch
sys.path.insert(0, sys.argv[2])
from test_hf_engine import _ENGINE, _eager_config, _generate
from transformers import AutoConfig, AutoModelForCausalLM
from stitch.runtime import CompilationConfig, StitchBackend
from stitch.runtime.hf import PAGED_ATTENTION_OP, continuous_batching_config

spec = json.loads(sys.argv[1])
out = {}
def attempt(name, fn):
    try:
        return fn()
    except Exception as e:
        out[name] = f"{type(e).__name__}: {(str(e).splitlines() or [repr(e)])[0][:160]}"
config = AutoConfig.for_model(spec["family"], **spec["fields"])
torch.manual_seed(0)
try:
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
except ValueError:  # no SDPA for this family
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
model.eval()
out["attention"] = model.config._attn_implementation
want = attempt("eager_error", lambda: _generate(model, _eager_config(_ENGINE)))
backend = StitchBackend(
    CompilationConfig(splitting_ops=[PAGED_ATTENTION_OP], cache_dir=tempfile.mkdtemp())
)
got = attempt(
    "stitch_error",
    lambda: _generate(model, continuous_batching_config(model, backend, **_ENGINE)),
)
if want and got:
    out["tokens_equal"] = [t for t, _ in got] == [t for t, _ in want]
    out["logprob_diff"] = max(
        abs(a - b)
        for (_, la), (_, lb) in zip(got, want)
        for a, b in zip(la, lb)
    )
elif got:
    # transformers' engine fails on this family: the model's own greedy
    # generate (no engine, no paged cache) is the reference instead.
    from test_hf_engine import _prompts_and_generation
    prompts, generation = _prompts_and_generation()
    with torch.no_grad():
        plain = [
            model.generate(torch.tensor([p]), generation_config=generation)[0, len(p):].tolist()
            for p in prompts
        ]
    out["generate_equal"] = [t for t, _ in got] == plain
print("RESULT " + json.dumps(out))
"""


def fields(family: str) -> dict[str, Any]:
    merged = {**SMALL, **FAMILIES[family]}
    return {k: v for k, v in merged.items() if v is not None}


def run(family: str) -> dict[str, Any]:
    tests = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
    spec = json.dumps({"family": family, "fields": fields(family)})
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=os.path.join(scratch, "ind"))
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, spec, tests],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"stitch_error": f"the process exited {done.returncode}: {tail[:160]}"}


def verdict(res: dict[str, Any]) -> str:
    if "stitch_error" in res:
        if "StitchConfigError" in res["stitch_error"]:
            return "refused"
        return "transformers' engine fails too" if "eager_error" in res else "FAILS"
    if "eager_error" in res:
        # Compared with the model's own generate instead.
        equal = res.get("generate_equal")
        return "= generate (engine fails)" if equal else "TOKENS DIFFER"
    return "= eager" if res["tokens_equal"] else "TOKENS DIFFER"


def row(family: str, res: dict[str, Any]) -> str:
    diff = f"{res['logprob_diff']:.1e}" if "logprob_diff" in res else ""
    error = res.get("stitch_error") or (
        f"transformers' engine: {res['eager_error']}" if "eager_error" in res else ""
    )
    return (
        f"| {family} | {res.get('attention', '')} | {verdict(res)} | {diff} | "
        f"{error.replace('|', '/')} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", help=", ".join(FAMILIES))
    args = parser.parse_args()
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown family {unknown[0]!r}; known: {', '.join(FAMILIES)}")
    import torch
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}\n")
    print("| family | attention | through Stitch | logprob diff | error |")
    print("| --- | --- | --- | ---: | --- |")
    bad = 0
    for family in args.families or FAMILIES:
        res = run(family)
        print(row(family, res), flush=True)
        bad += verdict(res) in ("FAILS", "TOKENS DIFFER")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
