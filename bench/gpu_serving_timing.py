"""How bench/gpu_serving.py times: its clock, the variants' forwards measured in
interleaved repeats, and the floors it states beside them."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch


class AttentionShapes(Protocol):
    """What the launch floor reads of a subject (gpu_serving_model.Subject)."""

    caches: Sequence[torch.Tensor]
    heads: int
    head_dim: int
    dtype: torch.dtype


# -- the clock ----------------------------------------------------------------------------
class Clock:
    """CUDA events on a GPU, wall time elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def latency_samples(self, fn: Callable[[], Any], iters: int) -> list[float]:
        """µs of each of ``iters`` calls, each started on an idle device."""
        times = []
        for _ in range(iters):
            self.sync()
            if self.cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e6)
        return times

    def latency_us(self, fn: Callable[[], Any], iters: int) -> float:
        return statistics.median(self.latency_samples(fn, iters))

    def host_samples(self, fn: Callable[[], Any], iters: int) -> list[float]:
        """Host µs of each of ``iters`` calls, each started on an idle device, so
        that the launches never wait for it."""
        times = []
        for _ in range(iters):
            self.sync()
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
        self.sync()
        return times

    def host_us(self, fn: Callable[[], Any], iters: int) -> tuple[float, float]:
        """The median and the 10th percentile of one call's host time."""
        times = self.host_samples(fn, iters)
        return statistics.median(times), p10(times)

    def back_to_back_us(self, fn: Callable[[], Any], iters: int) -> float:
        """µs per call of ``iters`` calls issued back to back from an idle
        device: CUDA events around them all on a GPU, wall time elsewhere."""
        self.sync()
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e3 / iters
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters * 1e6


def p10(times: Sequence[float]) -> float:
    # NOTE: [host time's low percentile]
    # Other work on the machine only ever adds to a call's host time; on the
    # GPU machine the same forward's median moved by hundreds of µs from one
    # run to the next (and once between batch 1 and 8 of one run), while the
    # profiler counted the same CPU time.  The 10th percentile is what the
    # call itself costs; the report gives both.
    return statistics.quantiles(times, n=10)[0] if len(times) > 1 else times[0]


# -- the variants' forwards, in interleaved repeats ------------------------------------------
# NOTE: [the variants take turns]
# On an H200, forwards back to back of Stitch's FULL and of reduce-overhead
# differed by 3-4% (about 30 µs, docs/gpu/h200_window_4.md), while the median
# host time of one forward moved by hundreds of µs from one run to the next
# (NOTE: [host time's low percentile]).  A run that timed every forward of one
# variant, then every forward of the next, gave whatever drifted meanwhile
# (clocks, the host's other work) to one variant alone.  So every variant is
# compiled and captured first, then each repeat times each size of every
# variant in turn (A, B, C, then A, B, C again), and the report gives the min
# over the repeats (interference only ever adds, as to host time) beside their
# median (how far they moved).  The time that ranks the variants is that of
# forwards issued back to back, as a serving loop that does not wait for each
# step's tokens issues them: it counts the host's time only where the device
# waits for it, unlike one forward timed from an idle device.
@dataclasses.dataclass
class Samples:
    """What the repeats measured of one variant at one size."""

    latency: list[float] = dataclasses.field(default_factory=list)
    host: list[float] = dataclasses.field(default_factory=list)
    back_to_back: list[float] = dataclasses.field(default_factory=list)  # one a repeat

    def row(self) -> dict[str, Any]:
        """The report's row: per-forward times pooled over the repeats, and the
        back-to-back time of each repeat with its min and median."""
        return {
            "latency_us": statistics.median(self.latency),
            "host_us": statistics.median(self.host),
            "host_p10_us": p10(self.host),
            "back_to_back_us": list(self.back_to_back),
            "back_to_back_min_us": min(self.back_to_back),
            "back_to_back_median_us": statistics.median(self.back_to_back),
        }


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many forwards each repeat times, and how many it runs first."""

    repeats: int
    # Per size: the forwards timed per variant (each way) in all, split over
    # the repeats.
    iters: Mapping[int, int]
    warmup: int  # per variant and size, split over the repeats

    def per_repeat(self, n: int) -> int:
        return max(1, math.ceil(self.iters[n] / self.repeats))

    def warmup_per_repeat(self) -> int:
        return math.ceil(self.warmup / self.repeats)


def measure_interleaved(
    forwards: Mapping[str, Callable[..., Any]],
    inputs: Mapping[int, tuple[tuple[Any, ...], dict[str, Any]]],
    plan: Plan,
    clock: Clock,
    after_repeat: Callable[[int, dict[str, dict[int, Samples]]], None],
) -> dict[str, dict[int, Samples]]:
    """Time every variant of ``forwards`` at every size of ``inputs`` once per
    repeat, the variants in turn (NOTE: [the variants take turns]);
    ``after_repeat(r, samples)`` runs after each repeat (a report so far)."""
    samples = {v: {n: Samples() for n in inputs} for v in forwards}
    for r in range(plan.repeats):
        for n, (args, kwargs) in inputs.items():
            iters = plan.per_repeat(n)
            for variant, forward in forwards.items():

                def call(f: Any = forward, a: Any = args, k: Any = kwargs) -> Any:
                    return f(*a, **k)

                s = samples[variant][n]
                with torch.inference_mode():
                    for _ in range(plan.warmup_per_repeat()):
                        call()
                    s.latency += clock.latency_samples(call, iters)
                    s.host += clock.host_samples(call, iters)
                    s.back_to_back.append(clock.back_to_back_us(call, iters))
        after_repeat(r, samples)
    return samples


# -- the floor of host time ---------------------------------------------------------------------
def launch_floor_us(
    subject: AttentionShapes, n: int, device: torch.device, clock: Clock, iters: int
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
        median, low = clock.host_us(attention, iters)
        attention_us, attention_p10 = median / len(layers), low / len(layers)
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

        median, low = clock.host_us(replays, iters)
        replay_us, replay_p10 = median / (len(layers) + 1), low / (len(layers) + 1)
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


def copy_bandwidth_gbs(
    device: torch.device, clock: Clock, iters: int, size: int
) -> float:
    """The device's copy bandwidth in GB/s: bytes read plus bytes written by a
    copy of ``size`` bytes on the device, over its median time."""
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    seconds = clock.latency_us(lambda: dst.copy_(src), iters) / 1e6
    return 2 * size / seconds / 1e9
