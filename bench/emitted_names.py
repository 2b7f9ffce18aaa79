"""How long the emitted stitching source's names are, and how big the file is.

Run: ``python bench/emitted_names.py [--before SHIM]``.

Each model is compiled as ``stitch run`` compiles it (eager pieces, one size,
a fresh cache) and the ``execution_fn.py`` it writes is measured: its longest
identifier, how many identifiers are over 48 characters, its size in
characters, and the size of its code alone (the header's comment lines left
out).  ``--before SHIM`` measures the same models in a subprocess that imports
``stitch`` from ``SHIM`` (a folder holding an older checkout's package), so
the two columns of each number come from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import tokenize
from collections.abc import Sequence
from pathlib import Path

# (label, ``stitch run`` arguments)
MODELS = (
    ("transformers Llama, 2 layers", ("--hf", "llama", "--layers", "2")),
    ("transformers Mixtral, 2 layers", ("--hf", "mixtral", "--layers", "2")),
    ("transformers GPT-2, 2 layers", ("--hf", "gpt2", "--layers", "2")),
    ("example llama, 16 layers", ("--example", "llama", "--layers", "16")),
)
LONG = 48  # the longest identifier the emitted source should have


def measure(source: str) -> dict[str, int]:
    """Longest identifier, identifiers over LONG, characters, characters of code."""
    names = [
        t.string
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type == tokenize.NAME
    ]
    lines = source.splitlines(keepends=True)
    header = 0
    while header < len(lines) and lines[header].startswith("#"):
        header += 1
    return {
        "longest": max(len(n) for n in names),
        "over": len({n for n in names if len(n) > LONG}),
        "chars": len(source),
        "code": len("".join(lines[header:])),
    }


def emitted_source(args: Sequence[str]) -> str:
    """The stitching source ``stitch run <args>`` writes (one graph)."""
    from stitch.runtime.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        cache, dump = os.path.join(tmp, "cache"), os.path.join(tmp, "dump")
        argv = ["run", *args, "--backend", "eager", "--sizes", "3"]
        argv += ["--cache-dir", cache, "--dump", dump]
        with contextlib.redirect_stdout(io.StringIO()):
            if main(argv) != 0:
                raise RuntimeError(f"stitch {' '.join(argv)} failed")
        files = sorted(Path(cache).rglob("execution_fn.py"))
        if len(files) != 1:
            raise RuntimeError(f"stitch {' '.join(args)}: {len(files)} emitted files")
        return files[0].read_text(encoding="utf-8")


def measure_all() -> dict[str, dict[str, int]]:
    return {label: measure(emitted_source(args)) for label, args in MODELS}


def measure_in(shim: str) -> dict[str, dict[str, int]]:
    """:func:`measure_all` in a subprocess importing ``stitch`` from ``shim``."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(shim))
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def format_table(
    now: dict[str, dict[str, int]], before: dict[str, dict[str, int]] | None
) -> str:
    from stitch.runtime.tables import markdown_table

    keys = (
        ("longest", "longest identifier"),
        ("over", f"identifiers over {LONG}"),
        ("chars", "file, chars"),
        ("code", "code, chars"),
    )
    headers = ["model"]
    for _, title in keys:
        headers += [f"{title}, before", f"{title}, now"] if before else [title]
    rows = []
    for label, numbers in now.items():
        row: list[object] = [label]
        for key, _ in keys:
            row += [f"{before[label][key]:,}"] if before else []
            row.append(f"{numbers[key]:,}")
        rows.append(tuple(row))
    return markdown_table(tuple(headers), rows, align="l" + "r" * (len(headers) - 1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="emitted_names",
        description="Identifier lengths and sizes of emitted stitching source.",
    )
    parser.add_argument(
        "--before",
        metavar="SHIM",
        help="also measure with the stitch package found in SHIM (an older checkout)",
    )
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    now = measure_all()
    if args.json:
        print(json.dumps(now))
        return 0
    before = measure_in(args.before) if args.before else None
    print(format_table(now, before))
    return 0


if __name__ == "__main__":
    sys.exit(main())
