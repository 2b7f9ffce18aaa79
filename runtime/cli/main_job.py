"""The main job's commands: ``stitch run`` (compile, check, time) and ``stitch inspect``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TextIO

import torch

from ..config import CompilationConfig
from ..examples import LlamaConfig, llama_inputs
from ..pipeline.api import CompiledModel
from ..pipeline.tiered.controls import wait_compiled
from ..saved.aot import AOTCompiledModel, aot_compile
from .eager_compare import compare_with_eager, print_comparison, print_paths
from .model_choice import example_choice, example_llama

# The token dimension of the example's inputs, marked unbacked when compiling:
# one graph for every size, 1 included, as a serving engine needs.
EXAMPLE_DYNAMIC_DIMS = {0: [0], 1: [0]}


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
    """Compile a built-in model with stitch, check it against eager, time both
    (NOTE: [one comparison with eager] in eager_compare.py)."""
    choice = example_choice(name, layers, list(sizes), "run")
    cfg = example_llama(name, layers, "run")
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
    start = time.perf_counter()
    with torch.no_grad():
        compiled = _aot_compile(choice.model, cfg, config, sizes[0])
    ready_s = time.perf_counter() - start
    timeline = _serve_until_compiled(compiled, cfg, sizes[0], start)

    rows, failures = compare_with_eager(choice, compiled, repeats)

    result = _print_compile(name, cfg, backend, compiled, ready_s, out)
    print_paths(compiled.cache_entry, source, out)
    if result is not None and dump_dir:
        print(
            f"  debug dump: {dump_dir} (execution_fn.py, computation_graph.py, index.md)",
            file=out,
        )
    if timeline:
        print(timeline, file=out)
    return print_comparison(rows, failures, out)


def _print_compile(
    name: str,
    cfg: LlamaConfig,
    backend: str,
    compiled: AOTCompiledModel,
    ready_s: float,
    out: TextIO,
) -> CompiledModel | None:
    """How the model was compiled or loaded: the saved forward, the backend call
    (returned; None when there was none)."""
    print(
        f"stitch run --example {name}: {cfg.num_layers} layers, backend {backend}",
        file=out,
    )
    if compiled.warm:
        how = "warm: the saved forward, loaded without Dynamo or Inductor"
    elif compiled.path:
        how = f"cold: traced and compiled, saved to {compiled.path}"
    else:
        how = "traced and compiled (not saved)"
    print(f"  aot_compile: {ready_s:.2f}s ({how})", file=out)
    stitch = compiled.backend
    why = stitch.compiled[-1].why_cold if stitch and stitch.compiled else None
    if why:
        print(f"  not warm: {why}", file=out)
    result = stitch.compiled[0] if stitch is not None and stitch.compiled else None
    if result is not None:
        print(
            f"  backend call: {result.seconds:.2f}s ({'warm' if result.warm else 'cold'} "
            f"start), {len(result.backends)} compiled pieces, graphs seen: "
            f"{len(stitch.compiled)}",
            file=out,
        )
    return result


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
