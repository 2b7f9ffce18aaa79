"""bench/gpu_serving.py's timing and variants, on the CPU: what they measure, not
how fast (the times themselves need a GPU)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from gpu_serving_model import STITCH_MODES  # noqa: E402  (bench/ on sys.path)
from gpu_serving_timing import Clock, Plan, measure_interleaved  # noqa: E402

from stitch.runtime import CompilationConfig  # noqa: E402
from stitch.runtime.passes.residual_addmm import UnfuseResidualAddmm  # noqa: E402
from stitch.runtime.pipeline.artifact_source import config_adapter  # noqa: E402


def test_the_variants_take_turns_over_the_repeats() -> None:
    # Each repeat times every variant at a size before the next size, and the
    # next repeat does so again: never all of one variant's forwards in a row.
    calls: list[tuple[str, int]] = []

    def variant(name: str) -> Any:
        return lambda x: calls.append((name, x.shape[0]))

    forwards = {v: variant(v) for v in ("a", "b", "c")}
    inputs = {n: ((torch.zeros(n),), {}) for n in (1, 8)}
    plan = Plan(repeats=5, iters={1: 10, 8: 3}, warmup=4)
    repeats: list[int] = []
    samples = measure_interleaved(
        forwards,
        inputs,
        plan,
        Clock(torch.device("cpu")),
        lambda r, _: repeats.append(r),
    )
    assert repeats == [0, 1, 2, 3, 4]
    # Per repeat and size: 1 warm-up, then per-forward, host and back-to-back
    # timings of ceil(iters / repeats) forwards each.
    per = {1: 1 + 3 * 2, 8: 1 + 3 * 1}
    runs = [
        (v, n) for _ in range(5) for n in (1, 8) for v in "abc" for _ in range(per[n])
    ]
    assert calls == runs
    for v in "abc":
        for n, each in ((1, 2), (8, 1)):
            row = samples[v][n].row()
            assert len(row["back_to_back_us"]) == 5  # one a repeat
            assert row["back_to_back_min_us"] == min(row["back_to_back_us"])
            assert len(samples[v][n].latency) == len(samples[v][n].host) == 5 * each


def test_the_copies_variant_is_full_without_stitchs_own_passes() -> None:
    # stitch-full-copies is FULL as it was before UnfuseResidualAddmm: its
    # pieces compile without Stitch's own passes, stitch-full's with them.
    def own_passes(variant: str) -> list[type]:
        config = CompilationConfig(**STITCH_MODES[variant])
        hook = config_adapter(config).inductor_config()["post_grad_custom_post_pass"]
        return [] if hook is None else [type(p) for p in hook.passes]

    assert own_passes("stitch-full") == [UnfuseResidualAddmm]
    assert own_passes("stitch-full-copies") == []
    assert CompilationConfig(**STITCH_MODES["stitch-full-copies"]).cudagraph_mode == (
        CompilationConfig(**STITCH_MODES["stitch-full"]).cudagraph_mode
    )
