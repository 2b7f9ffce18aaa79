"""Issue 57: a second process starts warm where the first compiled LongCat-Flash.

transformers' ``LongcatFlashForCausalLM`` (multi-head latent attention, a
mixture of experts with zero experts), compiled with
``torch.compile(model, backend=StitchBackend(tiered_start=False),
dynamic=True)`` (every piece compiled in the backend call) at lengths
7, 16 and 33, adds guards such as ``Ne(FloorDiv(s38, s61), 0)`` to
Dynamo's sizes.  Recorded as printed text they read back as sympy's
``floor(s38/s61)``, which torch's range analysis refused, and the second
process crashed (NOTE: [guards are recorded by structure, not printed] in
runtime/compat/guard_codec.py).  Both processes run the worker of
tests/test_hf.py's warm start; the second must compile nothing with Inductor,
start every graph warm, warn about nothing and equal eager.

The issue's lengths began with 1.  Dynamo specializes a size of 1, so that
length traced a second set of graphs (20 graphs and 24 Inductor compiles
rather than 11 and 13): 84 s and 39 s for the two processes alone on 2
cores, against 47 s and 27 s without it (2026-11-29), and 253 to 319 s in
CI's extended step.  Its graphs' guards are of the same kinds, test_hf.py's
warm start (the day's family) runs length 1 after the same three, and the
FloorDiv guards of the issue are asserted below (9 of them at these
lengths).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from backend_support import run_worker  # noqa: E402
from hf_support import WORKER  # noqa: E402

# Two cold Inductor compiles of a two-layer model, then a warm process.
# An extended module (NOTE: [CI's extended tests] in conftest.py).
pytestmark = pytest.mark.slow

# The config: hidden 64, 2 layers, 4 heads, 4 KV heads, vocab 512.
LONGCAT = {
    "vocab_size": 512,
    "hidden_size": 64,
    "num_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "ffn_hidden_size": 128,
    "expert_ffn_hidden_size": 64,
    "n_routed_experts": 4,
    "moe_topk": 2,
    "zero_expert_num": 2,
    "kv_lora_rank": 32,
    "q_lora_rank": 48,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "head_dim": 8,
    "max_position_embeddings": 256,
    "pad_token_id": 0,
}
LENGTHS = [7, 16, 33]


def test_longcat_starts_warm_in_a_second_process(tmp_path: Path) -> None:
    spec = {
        "config_class": "LongcatFlashConfig",
        "fields": LONGCAT,
        "cache_dir": str(tmp_path / "cache"),
        "lengths": LENGTHS,
    }
    cold = run_worker(spec, timeout=900, worker=WORKER)
    assert cold["deltas"]["num_inductor_compiles"] > 0, cold
    assert cold["max_error"] < 1e-4, cold
    assert cold["warnings"] == [], cold["warnings"]
    # Guards over integer sizes were recorded, the FloorDiv among them:
    # the warm start read them.
    recorded = [str(guard) for guards in cold["guards"] for guard in guards]
    assert any("FloorDiv" in guard for guard in recorded), cold["guards"]

    warm = run_worker(spec, timeout=900, worker=WORKER)
    assert warm["warnings"] == [], warm["warnings"]
    assert warm["deltas"]["num_inductor_compiles"] == 0, warm["deltas"]
    assert warm["deltas"]["num_warm_load_failures"] == 0, warm["deltas"]
    assert warm["warm"] == [True] * len(cold["warm"]), warm["warm"]
    assert warm["max_error"] < 1e-4, warm
