"""``stitch run --hf FAMILY | --model DIR | --module PKG.MOD:FACTORY``: a model compiled piecewise.

Compiles the chosen model (NOTE: [one resolution of the model choice] in
``model_choice.py``) with ``torch.compile(model, backend=StitchBackend(...),
dynamic=True)`` under the default splitting ops (its attention), runs it at
each size, checks every output against eager, and prints the pieces with their
module ranges, the emitted source, the compile counts and the per-forward
times.
"""

from __future__ import annotations

from typing import TextIO

from ..counter import compilation_counter
from ..pipeline.api import StitchBackend
from ..tables import markdown_table
from .eager_compare import compare_with_eager, print_comparison, print_paths
from .model_choice import ModelChoice


def run_model(
    choice: ModelChoice,
    *,
    backend: str = "inductor",
    cache_dir: str = "",
    dump_dir: str = "",
    repeats: int = 5,
    source: str = "",
    out: TextIO,
) -> int:
    """Compile ``choice``'s model with Stitch, check it against eager, time both."""
    stitch = StitchBackend(
        # stitch run times compiled forwards: no tiered start (NOTE: [where a
        # tiered start is the default]).
        choice.config(
            backend=backend,
            cache_dir=cache_dir,
            debug_dump_path=dump_dir,
            tiered_start=False,
            stitching_source=source,
        )
    )
    compiled = choice.compile(stitch)
    before = compilation_counter.snapshot()
    rows, failures = compare_with_eager(choice, compiled, repeats)
    after = compilation_counter.snapshot()

    def counted(name: str) -> int:
        return after[name] - before[name]

    print(
        f"stitch run {choice.flag}: {choice.description}, backend {backend}",
        file=out,
    )
    _print_graphs(stitch, out)
    print(
        f"  compiles: {counted('num_backend_compilations')} graphs, "
        f"{counted('num_inductor_compiles')} Inductor compiles, "
        f"{counted('num_compiled_artifacts_loaded')} artifacts loaded from the cache",
        file=out,
    )
    if dump_dir:
        print(f"  debug dump: {dump_dir}", file=out)
    return print_comparison(rows, failures, out)


def _print_graphs(stitch: StitchBackend, out: TextIO) -> None:
    """Each graph the backend compiled: its pieces, each piece's cache and
    module range, and where its emitted source is."""
    for i, result in enumerate(stitch.compiled, 1):
        splitting = [r for r in result.reports if r.splitting]
        pieces = [r for r in result.reports if not r.splitting]
        print(
            f"  graph {i}: {len(result.reports)} pieces ({len(splitting)} splitting, "
            f"{len(pieces)} compiled), {'warm' if result.warm else 'cold'} start in "
            f"{result.seconds:.2f}s",
            file=out,
        )
        print_paths(result.cache_dir, stitch.config.compile.stitching_source, out)
        rows = [
            (r.name, "split" if r.splitting else r.cache, r.module_path or "-")
            for r in result.reports
        ]
        table = markdown_table(("piece", "cache", "module"), rows)
        print("\n" + table + "\n", file=out)
