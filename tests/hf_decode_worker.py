"""A greedy decode through a saved forward in a fresh process (for tests/test_hf_decode.py).

Usage: ``python tests/hf_decode_worker.py '<json spec>'``.  The spec names the
cache directory and the shapes.  The worker builds transformers' tiny Llama
(Stitch's attention), compiles or loads its forward with
``aot_compile(model, example_kwargs={input_ids, past_key_values, use_cache})``,
decodes the prompt greedily through it and through the model itself, and
prints ``WORKER <json report>``: whether it loaded warm, the tokens of both,
Stitch's counter deltas, the ``stitch`` warnings, Dynamo's frame counters, and
the Python functions of ``torch._dynamo`` that ran in the forward calls of
the decode (``sys.setprofile``: none, when no guard is evaluated per step).

A spec with ``family`` instead runs one forward of that family's tiny model
(its default attention) through the saved forward and reports whether it
loaded warm and its largest difference from eager."""

from __future__ import annotations

import json
import logging
import sys
import types
from typing import Any

from aot_worker import _Collect, dynamo_calls  # _Collect: the stitch warnings


def main(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from stitch.runtime import CompilationConfig, aot_compile, compilation_counter
    from stitch.runtime.harness.hf_decode import greedy_decode, static_cache
    from stitch.runtime.hf import build_model

    collect = _Collect()
    logging.getLogger("stitch").addHandler(collect)
    model = build_model("llama", attn_implementation="stitch").eval()
    batch, length, new = spec["batch"], spec["prompt"], spec["new_tokens"]
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 512, (batch, length), generator=gen)
    config = CompilationConfig(cache_dir=spec["cache_dir"])
    before = compilation_counter.snapshot()
    cache = static_cache(model, batch, length + new)
    example = {"input_ids": prompt, "past_key_values": cache, "use_cache": True}
    with torch.no_grad():
        compiled = aot_compile(model, (), config, example_kwargs=example)
    untouched = bool(cache.layers[0].cumulative_length == 0)

    # The first call of each signature may load or compile it; the decode
    # after that (a fresh cache of the same length) is what a serving loop runs.
    greedy_decode(compiled, model, prompt, new)
    # The forward calls only: building the cache marks its tensors through
    # torch._dynamo (transformers' StaticCache), once, before the loop.
    profiled, dynamo_code = dynamo_calls(compiled)
    tokens = greedy_decode(profiled, model, prompt, new)
    eager = greedy_decode(model, model, prompt, new)
    after = compilation_counter.snapshot()
    frames = {}
    if "torch._dynamo.utils" in sys.modules:
        counters = sys.modules["torch._dynamo.utils"].counters
        frames = {k: dict(v) for k, v in counters.items() if k in ("frames", "stats")}
    forward = compiled.forward
    return {
        "warm": compiled.warm,
        "path": compiled.path,
        "cache_untouched_by_compile": untouched,
        "tokens": tokens.tolist(),
        "eager": eager.tolist(),
        "plain_function": isinstance(forward, types.MethodType)
        and type(forward.__func__) is types.FunctionType,
        "counter": {k: after[k] - before[k] for k in after if after[k] != before[k]},
        "warnings": collect.messages,
        "dynamo_frames": frames,
        "dynamo_code_per_step": sorted(dynamo_code),
    }


def saved_forward(spec: dict[str, Any]) -> dict[str, Any]:
    """One forward of ``spec["family"]``'s tiny model (its default attention)
    through ``aot_compile``: compiled, or loaded from the cache, then run."""
    import torch

    from stitch.runtime import CompilationConfig, aot_compile
    from stitch.runtime.hf import build_model, example_inputs

    torch.manual_seed(0)
    model = build_model(spec["family"]).eval()
    kwargs = example_inputs(spec["family"], spec["batch"], spec["prompt"], seed=1)
    config = CompilationConfig(cache_dir=spec["cache_dir"])
    with torch.no_grad():
        compiled = aot_compile(model, (), config, example_kwargs=kwargs)
        got, want = compiled(**kwargs).logits, model(**kwargs).logits
    return {
        "warm": compiled.warm,
        "saved": compiled.path is not None,
        "torch": torch.__version__,
        "max_diff": float((got - want).abs().max()),
    }


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    report = saved_forward(spec) if "family" in spec else main(spec)
    print("WORKER " + json.dumps(report, sort_keys=True))
