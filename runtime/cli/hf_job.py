"""``stitch run --hf FAMILY``: a tiny random-weight transformers model, compiled piecewise.

Builds the model from its config (no download), compiles it with
``torch.compile(model, backend=StitchBackend(...), dynamic=True)`` under the
default splitting ops (its attention), runs it at several sequence lengths,
checks every output against eager, and prints the pieces, the compile counts
and the per-forward times.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any, TextIO

import torch

from ..config import CompilationConfig
from ..counter import compilation_counter
from ..pipeline.api import StitchBackend
from ..tables import markdown_table
from .main_job import median_ms, timing_table

TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


def run_hf(
    family: str,
    *,
    lengths: Sequence[int],
    batch: int = 2,
    layers: int = 2,
    backend: str = "inductor",
    attn_implementation: str = "default",
    cache_dir: str = "",
    dump_dir: str = "",
    repeats: int = 5,
    out: TextIO,
) -> int:
    """Compile a tiny ``family`` model with Stitch, check it against eager, time both."""
    from stitch.runtime.hf import build_model

    # stitch run times compiled forwards: no tiered start (NOTE: [where a
    # tiered start is the default]).
    config = CompilationConfig(
        backend=backend,
        cache_dir=cache_dir,
        debug_dump_path=dump_dir,
        tiered_start=False,
    )
    model = build_model(
        family,
        layers=layers,
        attn_implementation=(
            None if attn_implementation == "default" else attn_implementation
        ),
    )
    attn_implementation = model.config._attn_implementation
    stitch = StitchBackend(config)
    compiled = torch.compile(model, backend=stitch, dynamic=True)
    before = compilation_counter.snapshot()

    rows, failures = _compare_with_eager(
        family, model, compiled, batch, lengths, repeats
    )
    after = compilation_counter.snapshot()

    print(
        f"stitch run --hf {family}: {type(model).__name__}, {layers} layers, "
        f"attn_implementation={attn_implementation!r}, backend {backend}, batch {batch}",
        file=out,
    )
    _print_graphs(stitch, out)
    print(
        f"  compiles: {after['num_backend_compilations'] - before['num_backend_compilations']} "
        f"graphs, {after['num_inductor_compiles'] - before['num_inductor_compiles']} Inductor "
        f"compiles, {after['num_compiled_artifacts_loaded'] - before['num_compiled_artifacts_loaded']} "
        "artifacts loaded from the cache",
        file=out,
    )
    for result in stitch.compiled:
        if result.cache_dir:
            print(f"  cache: {result.cache_dir}", file=out)
    if dump_dir:
        print(f"  debug dump: {dump_dir}", file=out)
    print("", file=out)
    print(timing_table(rows), file=out)
    if failures:
        print(f"\n{failures} length(s) differ from eager beyond tolerance", file=out)
        return 1
    return 0


def _compare_with_eager(
    family: str,
    model: torch.nn.Module,
    compiled: Any,
    batch: int,
    lengths: Sequence[int],
    repeats: int,
) -> tuple[list[tuple[Any, ...]], int]:
    """Per length, eager and Stitch's times and their largest difference; and
    how many lengths differ from eager beyond tolerance."""
    from stitch.runtime.hf import example_inputs, output_tensor

    rows = []
    failures = 0
    with torch.no_grad():
        for n in lengths:
            kwargs = example_inputs(family, batch, n, seed=n)
            expected = output_tensor(family, model(**kwargs))
            start = time.perf_counter()
            actual = output_tensor(family, compiled(**kwargs))
            first_ms = (time.perf_counter() - start) * 1e3
            err = (expected - actual).abs().max().item()
            ok = torch.allclose(expected, actual, **TOLERANCE)
            failures += not ok
            eager_ms = median_ms(functools.partial(model, **kwargs), repeats)
            stitch_ms = median_ms(functools.partial(compiled, **kwargs), repeats)
            rows.append((n, eager_ms, stitch_ms, first_ms, err, ok))
    return rows, failures


def _print_graphs(stitch: StitchBackend, out: TextIO) -> None:
    """Each graph the backend compiled: its pieces, each piece's cache and module."""
    for i, result in enumerate(stitch.compiled, 1):
        splitting = [r for r in result.reports if r.splitting]
        pieces = [r for r in result.reports if not r.splitting]
        print(
            f"  graph {i}: {len(result.reports)} pieces ({len(splitting)} splitting, "
            f"{len(pieces)} compiled), {'warm' if result.warm else 'cold'} start in "
            f"{result.seconds:.2f}s",
            file=out,
        )
        pieces = [
            (r.name, "split" if r.splitting else r.cache, r.module_path or "-")
            for r in result.reports
        ]
        table = markdown_table(("piece", "cache", "module"), pieces)
        print("\n" + table + "\n", file=out)
