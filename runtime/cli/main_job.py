"""The main job's commands: ``stitch run`` (compile, check, time) and ``stitch inspect``."""

from __future__ import annotations

import ast
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any, TextIO

import torch

from ..config import CompilationConfig
from ..examples import LlamaConfig, build_llama, llama_inputs
from ..examples.models import runnable_examples
from ..pipeline.aot import AOTCompiledModel, aot_compile
from ..store.cache import INDEX_FILE


def mark_batch_dynamic(*tensors: torch.Tensor) -> None:
    """Make dim 0 of the inputs dynamic without Dynamo's 0/1 specialization.

    An unbacked size keeps batch size 1 on the same graph as every other size,
    as a serving engine needs (``mark_dynamic`` would recompile for size 1).
    """
    for t in tensors:
        torch._dynamo.decorators.mark_unbacked(t, 0)


def _median_ms(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


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
    out: TextIO,
) -> int:
    """Compile a built-in model with stitch, check it against eager, time both."""
    runnable = runnable_examples()
    if name not in runnable:
        known = ", ".join(sorted(runnable))
        raise SystemExit(f"stitch run: unknown example {name!r} (runnable: {known})")
    cfg = LlamaConfig(num_layers=layers or runnable[name])
    for n in sizes:
        if not 1 <= n <= cfg.max_seqs:
            raise SystemExit(f"stitch run: size {n} must be in [1, {cfg.max_seqs}]")
    dump_dir = dump_dir or tempfile.mkdtemp(prefix="stitch-dump-")
    config = CompilationConfig(
        backend=backend,
        cache_dir=cache_dir,
        debug_dump_path=dump_dir,
        compile_sizes=list(compile_sizes),
        compile_ranges_split_points=list(split_points),
        max_num_batched_tokens=cfg.max_seqs,
    )
    model = build_llama(cfg)
    start = time.perf_counter()
    with torch.no_grad():
        compiled = _aot_compile(model, cfg, config, sizes[0])
    ready_s = time.perf_counter() - start
    stitch = compiled.backend

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
            eager_ms = _median_ms(lambda: model(input_ids, positions), repeats)
            stitch_ms = _median_ms(lambda: compiled(input_ids, positions), repeats)
            rows.append((n, eager_ms, stitch_ms, first_ms, err, ok))

    result = stitch.compiled[0] if stitch is not None and stitch.compiled else None
    print(
        f"stitch run --example {name}: {cfg.num_layers} layers, backend {backend}",
        file=out,
    )
    _print_aot(compiled, ready_s, out)
    if result is not None:
        print(
            f"  backend call: {result.seconds:.2f}s ({'warm' if result.warm else 'cold'} "
            f"start), {len(result.backends)} compiled pieces, graphs seen: "
            f"{len(stitch.compiled)}",
            file=out,
        )
    if compiled.cache_entry:
        print(
            f"  emitted source: {os.path.join(compiled.cache_entry, 'execution_fn.py')}",
            file=out,
        )
        print(f"  cache: {compiled.cache_entry}", file=out)
    if result is not None:
        print(
            f"  debug dump: {dump_dir} (execution_fn.py, computation_graph.py, index.md)",
            file=out,
        )
    print("", file=out)
    print(
        "| tokens | eager ms | stitch ms | speed-up | first call ms | max abs err | ok |",
        file=out,
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |", file=out)
    for n, eager_ms, stitch_ms, first_ms, err, ok in rows:
        print(
            f"| {n} | {eager_ms:.3f} | {stitch_ms:.3f} | {eager_ms / stitch_ms:.2f}x | "
            f"{first_ms:.1f} | {err:.2e} | {'yes' if ok else 'NO'} |",
            file=out,
        )
    if failures:
        print(f"\n{failures} size(s) differ from eager beyond tolerance", file=out)
        return 1
    return 0


def _aot_compile(
    model: torch.nn.Module, cfg: LlamaConfig, config: CompilationConfig, size: int
) -> AOTCompiledModel:
    """Compile (or load the saved forward) with example inputs of ``size`` tokens.

    The token dimension is marked unbacked when compiling: one graph for every
    size, 1 included, as a serving engine needs.
    """
    example = llama_inputs(cfg, size, seed=size)
    return aot_compile(model, example, config, dynamic_dims={0: [0], 1: [0]})


def _print_aot(compiled: AOTCompiledModel, seconds: float, out: TextIO) -> None:
    if compiled.warm:
        how = "warm: the saved forward, loaded without Dynamo or Inductor"
    elif compiled.path:
        how = f"cold: traced and compiled, saved to {compiled.path}"
    else:
        how = "traced and compiled (not saved)"
    print(f"  aot_compile: {seconds:.2f}s ({how})", file=out)


def inspect_cache(path: str, out: TextIO) -> int:
    """Print a cache entry's index in human form (a rank folder or its parent)."""
    candidates = []
    if os.path.isfile(os.path.join(path, INDEX_FILE)):
        candidates.append(path)
    elif os.path.isdir(path):
        for root, _dirs, files in sorted(os.walk(path)):
            if INDEX_FILE in files:
                candidates.append(root)
    if not candidates:
        print(f"stitch inspect: no {INDEX_FILE} under {path}", file=out)
        return 2
    for directory in candidates:
        index_path = os.path.join(directory, INDEX_FILE)
        try:
            with open(index_path, encoding="utf-8") as f:
                data = ast.literal_eval(f.read())
        except (OSError, SyntaxError, ValueError) as exc:
            print(f"{index_path}: unreadable ({type(exc).__name__}: {exc})", file=out)
            continue
        print(f"{directory}", file=out)
        for key in (
            "stitch_version",
            "torch_version",
            "backend",
            "config_hash",
            "graph_key",
        ):
            value = data.get(key, "?")
            if isinstance(value, str) and len(value) > 24:
                value = value[:16] + "…"
            print(f"  {key}: {value}", file=out)
        source = data.get("source", {})
        print(
            f"  stitching source: {source.get('file')} (sha256 "
            f"{str(source.get('sha256', ''))[:12]}…, dispatch on "
            f"{source.get('dispatch_on') or 'each piece'})",
            file=out,
        )
        pieces = data.get("pieces", {})
        print(f"  compiled pieces: {len(pieces)}", file=out)
        artifacts: set[str] = set()
        for name in sorted(pieces, key=lambda p: (len(p), p)):
            record = pieces[name]
            entries = record.get("entries", [])
            targets = ", ".join(str(e.get("target")) for e in entries)
            files = [e.get("artifact") for e in entries if e.get("artifact")]
            artifacts.update(files)
            exists = all(os.path.exists(os.path.join(directory, f)) for f in files)
            print(
                f"    {name:<12} {record.get('module_path') or '-':<40} [{targets}] "
                f"{len(files)} artifact(s){'' if exists else ' (MISSING)'}",
                file=out,
            )
        print(f"  unique artifacts: {len(artifacts)}", file=out)
    return 0
