"""The main job's commands: ``stitch run`` (compile, check, time) and ``stitch inspect``."""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any, TextIO

import torch

from ..config import CompilationConfig
from ..examples import LlamaConfig, build_llama, llama_inputs
from ..examples.models import runnable_examples
from ..pipeline.tiered.controls import wait_compiled
from ..saved.aot import AOTCompiledModel, aot_compile
from ..tables import markdown_table


def median_ms(fn: Any, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# One row of the timing table: tokens, eager ms, stitch ms, first call ms, the
# largest difference from eager, and whether it is within tolerance.
TimingRow = tuple[int, float, float, float, float, bool]


def timing_table(rows: Sequence[TimingRow]) -> str:
    """``stitch run``'s table (the examples' and transformers' models alike):
    per token count, eager and Stitch times and whether the outputs agree."""
    return markdown_table(
        (
            "tokens",
            "eager ms",
            "stitch ms",
            "speed-up",
            "first call ms",
            "max abs err",
            "ok",
        ),
        [
            (
                n,
                f"{eager_ms:.3f}",
                f"{stitch_ms:.3f}",
                f"{eager_ms / stitch_ms:.2f}x",
                f"{first_ms:.1f}",
                f"{err:.2e}",
                "yes" if ok else "NO",
            )
            for n, eager_ms, stitch_ms, first_ms, err, ok in rows
        ],
        align="rrrrrrl",
    )


# The token dimension of the example's inputs, marked unbacked when compiling:
# one graph for every size, 1 included, as a serving engine needs.
EXAMPLE_DYNAMIC_DIMS = {0: [0], 1: [0]}


def example_llama(name: str, layers: int | None, command: str) -> LlamaConfig:
    """The config of built-in example ``name`` (exits naming the runnable ones)."""
    runnable = runnable_examples()
    if name not in runnable:
        known = ", ".join(sorted(runnable))
        raise SystemExit(
            f"stitch {command}: unknown example {name!r} (runnable: {known})"
        )
    return LlamaConfig(num_layers=layers or runnable[name])


def example_config(
    cfg: LlamaConfig,
    *,
    cache_dir: str,
    compile_sizes: Sequence[int] = (),
    split_points: Sequence[int] = (),
    **fields: Any,
) -> CompilationConfig:
    """The config ``stitch run --example`` compiles under, and ``stitch
    compile --example`` too, so that a run finds what a compile saved."""
    return CompilationConfig(
        cache_dir=cache_dir,
        compile_sizes=list(compile_sizes),
        compile_ranges_split_points=list(split_points),
        max_num_batched_tokens=cfg.max_seqs,
        **fields,
    )


def run_example(
    name: str,
    *,
    sizes: Sequence[int],
    backend: str = "inductor",
    layers: int | None = None,
    cache_dir: str = "",
    dump_dir: str = "",
    compile_sizes: Sequence[int] = (),
    split_points: Sequence[int] = (),
    repeats: int = 5,
    tiered: bool = False,
    compile_workers: int = 0,
    source: str = "",
    out: TextIO,
) -> int:
    """Compile a built-in model with stitch, check it against eager, time both."""
    cfg = example_llama(name, layers, "run")
    for n in sizes:
        if not 1 <= n <= cfg.max_seqs:
            raise SystemExit(f"stitch run: size {n} must be in [1, {cfg.max_seqs}]")
    config = example_config(
        cfg,
        cache_dir=cache_dir,
        compile_sizes=compile_sizes,
        split_points=split_points,
        backend=backend,
        debug_dump_path=dump_dir,
        tiered_start=tiered,
        compile_workers=compile_workers,
        stitching_source=source,
    )
    model = build_llama(cfg)
    start = time.perf_counter()
    with torch.no_grad():
        compiled = _aot_compile(model, cfg, config, sizes[0])
    ready_s = time.perf_counter() - start
    stitch = compiled.backend
    timeline = _serve_until_compiled(compiled, cfg, sizes[0], start)

    rows, failures = _compare_with_eager(model, compiled, cfg, sizes, repeats)

    result = stitch.compiled[0] if stitch is not None and stitch.compiled else None
    _print_compile(name, cfg, backend, compiled, ready_s, out)
    if compiled.cache_entry:
        print(
            f"  emitted source: {os.path.join(compiled.cache_entry, 'execution_fn.py')}",
            file=out,
        )
        print(f"  cache: {compiled.cache_entry}", file=out)
    if source:
        print(f"  ran in its place: {os.path.abspath(source)} (--source)", file=out)
    if result is not None and dump_dir:
        print(
            f"  debug dump: {dump_dir} (execution_fn.py, computation_graph.py, index.md)",
            file=out,
        )
    if timeline:
        print(timeline, file=out)
    print("", file=out)
    print(timing_table(rows), file=out)
    if failures:
        print(f"\n{failures} size(s) differ from eager beyond tolerance", file=out)
        return 1
    return 0


def _compare_with_eager(
    model: torch.nn.Module,
    compiled: AOTCompiledModel,
    cfg: LlamaConfig,
    sizes: Sequence[int],
    repeats: int,
) -> tuple[list[tuple[Any, ...]], int]:
    """Per size, eager and Stitch's times and their largest difference; and how
    many sizes differ from eager beyond tolerance."""
    rows = []
    failures = 0
    with torch.no_grad():
        for n in sizes:
            input_ids, positions = llama_inputs(cfg, n, seed=n)
            model.reset_kv_caches()
            expected = model(input_ids, positions)
            model.reset_kv_caches()
            start = time.perf_counter()
            actual = compiled(input_ids, positions)
            first_ms = (time.perf_counter() - start) * 1e3
            err = (expected - actual).abs().max().item()
            ok = torch.allclose(expected, actual, rtol=1e-4, atol=1e-4)
            failures += not ok
            eager_ms = median_ms(
                functools.partial(model, input_ids, positions), repeats
            )
            stitch_ms = median_ms(
                functools.partial(compiled, input_ids, positions), repeats
            )
            rows.append((n, eager_ms, stitch_ms, first_ms, err, ok))
    return rows, failures


def _print_compile(
    name: str,
    cfg: LlamaConfig,
    backend: str,
    compiled: AOTCompiledModel,
    ready_s: float,
    out: TextIO,
) -> None:
    """How the model was compiled or loaded: the saved forward, the backend call."""
    print(
        f"stitch run --example {name}: {cfg.num_layers} layers, backend {backend}",
        file=out,
    )
    _print_aot(compiled, ready_s, out)
    stitch = compiled.backend
    result = stitch.compiled[0] if stitch is not None and stitch.compiled else None
    if result is not None:
        print(
            f"  backend call: {result.seconds:.2f}s ({'warm' if result.warm else 'cold'} "
            f"start), {len(result.backends)} compiled pieces, graphs seen: "
            f"{len(stitch.compiled)}",
            file=out,
        )


def _serve_until_compiled(
    compiled: AOTCompiledModel, cfg: LlamaConfig, size: int, start: float
) -> str:
    """A tiered start's timeline, once every piece is swapped in: "" when
    nothing compiles in the background.  It waits as the docs say to before
    timing (NOTE: [say what is still compiling]): ``wait_compiled``, then a
    forward of ``size`` tokens, in which each landed piece swaps in."""
    backend = compiled.backend
    tiers = [c.tier for c in backend.compiled if c.tier] if backend else []
    if not tiers:
        return ""
    args = llama_inputs(cfg, size, seed=size)
    with torch.no_grad():
        compiled(*args)
        first = time.perf_counter() - start
        wait_compiled()
        # A piece compiled under guards on its size swaps in only at a size
        # they hold for (NOTE: [guards a landing adds on the size alone]).
        for _ in range(3):
            if all(t.settled for t in tiers):
                break
            compiled(*args)
    lines = [f"  tiered start: first output at {first:.2f}s"]
    for tier in tiers:
        offset = tier.started - start
        line = tier.timeline()
        for name in sorted(line["compiled_at"], key=line["compiled_at"].get):
            swapped = line["swapped_at"].get(name)
            lines.append(
                f"    {name}: compiled at {offset + line['compiled_at'][name]:.2f}s, "
                + (
                    f"swapped in at {offset + swapped:.2f}s"
                    if swapped is not None
                    else f"uncompiled: {line['uncompiled'].get(name, '?')}"
                )
            )
        last = line["last_swap_at"]
        if last is not None:
            lines.append(f"  last swap at {offset + last:.2f}s")
    return "\n".join(lines)


def _aot_compile(
    model: torch.nn.Module, cfg: LlamaConfig, config: CompilationConfig, size: int
) -> AOTCompiledModel:
    """Compile (or load the saved forward) with example inputs of ``size``
    tokens (the token dimension unbacked: :data:`EXAMPLE_DYNAMIC_DIMS`)."""
    example = llama_inputs(cfg, size, seed=size)
    return aot_compile(model, example, config, dynamic_dims=EXAMPLE_DYNAMIC_DIMS)


def _print_aot(compiled: AOTCompiledModel, seconds: float, out: TextIO) -> None:
    if compiled.warm:
        how = "warm: the saved forward, loaded without Dynamo or Inductor"
    elif compiled.path:
        how = f"cold: traced and compiled, saved to {compiled.path}"
    else:
        how = "traced and compiled (not saved)"
    print(f"  aot_compile: {seconds:.2f}s ({how})", file=out)
    backend = compiled.backend
    why = backend.compiled[-1].why_cold if backend and backend.compiled else None
    if why:
        print(f"  not warm: {why}", file=out)
