"""What this torch release gives, checked against docs/torch_versions.md.

NOTE: [the version table is written by the tests]
docs/torch_versions.md has one row per torch release CI tests (2.11 and 2.15
in .ci/torch_versions.sh, 2.13 in the main suite).  This module measures the
row of the running torch: one process compiles with ``aot_compile`` (CUDA
graphs emulated on CPU, see test_cudagraph_cpu.py) and saves, a fresh one
loads the saved forward; what the second one got is the row.  The row in the
docs must say exactly that; ``STITCH_UPDATE_DOCS=1`` rewrites it instead.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from stitch.runtime.compat import dynamo, versions

from aot_support import MODEL_SOURCE, PIECES, run_worker

DOC = Path(__file__).resolve().parent.parent / "docs" / "torch_versions.md"
UPDATE_ENV = "STITCH_UPDATE_DOCS"
COLUMNS = (
    "torch",
    "triton",
    "aot_compile",
    "warm start",
    "guard-free forward",
    "CUDA graphs in a saved forward",
)
ROW = re.compile(r"^\| (\d+\.\d+) \|")
SEPARATOR = "| " + " | ".join("---" for _ in COLUMNS) + " |"


def parse(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def test_the_running_torch_is_supported() -> None:
    assert versions.OLDEST <= versions.TORCH <= versions.NEWEST, torch.__version__
    assert versions.check_supported()


@pytest.fixture(scope="module")
def saved_and_loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("versions")
    model_file = tmp / "aot_test_model.py"
    model_file.write_text(MODEL_SOURCE)
    spec = {
        "model_file": str(model_file),
        "cache_dir": str(tmp / "cache"),
        # 3 pads to the capture size 4: warm-up, capture, replay.
        "sizes": [3, 3, 3],
        "emulate_graphs": True,
        "config": {"cudagraph_capture_sizes": [1, 2, 4]},
    }
    cold = run_worker(spec)
    warm = run_worker(spec, tmp / "inductor-empty")
    return {"cold": cold, "warm": warm}


def measured_row(cold: dict[str, Any], warm: dict[str, Any]) -> list[str]:
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = "-"
    if not warm["warm"]:
        start = "none: every process compiles"
    elif warm["imported"]:
        start = "saved forward, imports " + ", ".join(warm["imported"])
    else:
        start = "saved forward, no Dynamo or Inductor import"
    graphs = (
        f"rebuilt and captured warm ({warm['graph_runners']} runner, emulated on CPU)"
        if warm["graph_runners"] and warm["replays"]
        else "not rebuilt"
    )
    return [
        "{}.{}".format(*versions.TORCH),
        triton,
        (
            "on by default"
            if dynamo.aot_compile_on_by_default()
            else "behind a config switch (Stitch sets it)"
        ),
        start,
        "yes" if warm["plain_function"] else "no: Dynamo's guards run per call",
        graphs,
    ]


def render(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def rows_of(text: str) -> dict[str, str]:
    return {m.group(1): line for line in text.splitlines() if (m := ROW.match(line))}


@pytest.mark.slow
def test_the_docs_say_what_this_torch_gives(saved_and_loaded: dict[str, Any]) -> None:
    cold, warm = saved_and_loaded["cold"], saved_and_loaded["warm"]
    assert cold["warnings"] == [] and warm["warnings"] == []
    assert cold["counter"]["num_inductor_compiles"] == PIECES
    assert max(warm["diffs"].values()) < 1e-4
    row = render(measured_row(cold, warm))
    version = row.split(" | ")[0].removeprefix("| ")
    text = DOC.read_text()
    rows = rows_of(text)
    if os.environ.get(UPDATE_ENV):
        if version in rows:
            text = text.replace(rows[version], row)
        else:
            # After the rows of older releases (or the header's separator).
            older = [line for v, line in rows.items() if parse(v) < parse(version)]
            after = older[-1] if older else SEPARATOR
            text = text.replace(after, after + "\n" + row, 1)
        DOC.write_text(text)
        rows = rows_of(text)
    assert (
        version in rows
    ), f"{DOC.name} has no row for torch {version}; {UPDATE_ENV}=1 writes it:\n{row}"
    assert rows[version] == row, (
        f"{DOC.name} says\n{rows[version]}\nbut torch {torch.__version__} gives\n{row}\n"
        f"({UPDATE_ENV}=1 rewrites the row)"
    )


def test_the_table_header_names_the_columns() -> None:
    assert render(list(COLUMNS)) + "\n" + SEPARATOR in DOC.read_text()
