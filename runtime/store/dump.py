"""The debug dump: what was split, what runs, and what each piece cost."""

from __future__ import annotations

import dataclasses
import os

import torch.fx as fx

from .files import atomic_write

# The emitted stitching source in the dump (the file its code runs from when
# there is no cache).
SOURCE_FILE = "execution_fn.py"


@dataclasses.dataclass(frozen=True)
class PieceReport:
    name: str
    splitting: bool
    module_path: str
    targets: list[str]
    seconds: float
    cache: str  # "hit", "miss", "shared" (a repeated piece's compile), "partial", "-"


def index_markdown(reports: list[PieceReport]) -> str:
    from ..tables import markdown_table

    rows = [
        (
            r.name,
            "splitting (eager, inlined)" if r.splitting else "compiled",
            r.module_path or "-",
            ", ".join(r.targets) if r.targets else "-",
            f"{r.seconds:.3f}",
            r.cache,
        )
        for r in reports
    ]
    headers = ("piece", "kind", "module path", "compiled for", "compile s", "cache")
    table = markdown_table(headers, rows, align="llllrl")
    return f"# Stitch pieces\n\n{table}\n"


DUMP_ENV = "STITCH_DEBUG_DUMP"


def write_debug_dump(
    directory: str, split_gm: fx.GraphModule, code: str, reports: list[PieceReport]
) -> None:
    os.makedirs(directory, exist_ok=True)
    graph_text = split_gm.print_readable(print_output=False)
    atomic_write(os.path.join(directory, "computation_graph.py"), graph_text.encode())
    atomic_write(os.path.join(directory, SOURCE_FILE), code.encode())
    atomic_write(os.path.join(directory, "index.md"), index_markdown(reports).encode())


def debug_dump(
    configured: str,
    split_gm: fx.GraphModule,
    code: str,
    reports: list[PieceReport],
    source_file: str | None,
) -> str | None:
    """Write the debug dump where ``configured`` (else ``$STITCH_DEBUG_DUMP``)
    says; the file the emitted source runs from: ``source_file`` (the cache's),
    else the dump's (None: neither)."""
    directory = configured or os.environ.get(DUMP_ENV, "")
    if directory:
        write_debug_dump(directory, split_gm, code, reports)
        if source_file is None:
            return os.path.join(directory, SOURCE_FILE)
    return source_file
