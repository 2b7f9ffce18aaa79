"""Why a run did not start warm: the factors each entry records and what differs.

The slow tests make real misses (a changed config field, an edited model, and
another torch, which a test can only write into a copied entry's factors) and
read the explanation a run logs and ``stitch cache explain`` prints.  The real
miss for another torch is in .ci/torch_versions.sh (NOTE: [a real miss for
another torch]): torch 2.11 and 2.15 compile into one folder and ``stitch
cache explain`` must name both versions.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import msgspec
import pytest
import torch

from stitch.runtime import CompilationConfig
from stitch.runtime.cli.main import main
from stitch.runtime.examples import LlamaConfig
from stitch.runtime.store import codec
from stitch.runtime.store.explain import (
    FACTORS_FILE,
    EntryFactors,
    differences,
    entry_factors,
    read_factors,
)

from backend_support import TINY, compile_model, eager_and_compiled, model_for


def factors(**change: object) -> EntryFactors:
    base = entry_factors(
        {"compile_sizes": [1, 8], "backend": "inductor"},
        "inductor",
        ["cpu"],
        "",
        ["placeholder x", "call_function torch.relu", "output y"],
    )
    return msgspec.structs.replace(base, **change)


def test_each_factor_is_named_with_both_values() -> None:
    here = factors()
    assert differences(here, here) == []
    other = factors(config={**here.config, "compile_sizes": "[1, 4]"})
    assert differences(other, here) == [
        "config field compile_sizes: [1, 4] there, [1, 8] here"
    ]
    other = factors(versions={**here.versions, "torch": "2.11.0"})
    assert differences(other, here) == [f"torch 2.11.0 there, {torch.__version__} here"]
    other = factors(graph=("placeholder x", "call_function torch.sigmoid", "output y"))
    (line,) = differences(other, here)
    assert line.startswith("graph: first differing line #1: ")
    assert "torch.sigmoid" in line and "torch.relu" in line
    other = factors(graph=here.graph[:2])
    assert differences(other, here) == [
        "graph: 2 lines there, 3 here (from line #2: 'output y')"
    ]


def test_a_damaged_or_missing_factors_file_is_an_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / FACTORS_FILE).write_text("{'kind': 'entry-factors', 'version': 1}")
    with pytest.raises(codec.RecordError, match=FACTORS_FILE):
        read_factors(str(tmp_path))
    assert main(["cache", "explain", str(tmp_path)]) == 2
    assert (
        f"{tmp_path / FACTORS_FILE}: field config: is missing"
        in capsys.readouterr().out
    )
    assert main(["cache", "explain", str(tmp_path / "nothing")]) == 2
    assert f"{tmp_path / 'nothing'} has no {FACTORS_FILE}" in capsys.readouterr().out


def compile_tiny(root: Path, cfg: LlamaConfig = TINY, **fields: object):  # type: ignore[no-untyped-def]
    """The tiny model compiled into ``root``, its entry whole once the call
    returns (``tiered_start=False``: the tests read its index and factors)."""
    torch._dynamo.reset()
    model = model_for(cfg)
    config = CompilationConfig(cache_dir=str(root), tiered_start=False, **fields)  # type: ignore[arg-type]
    be, fn = compile_model(model, config)
    eager_and_compiled(model, fn, cfg, 8)
    (result,) = be.compiled
    return result


def entries(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/rank_0/index.py"))


@pytest.mark.slow
def test_real_misses_are_explained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "cache"
    first = compile_tiny(root)
    assert not first.warm and first.why_cold is None  # nothing to compare with
    # (a) a changed config field
    with caplog.at_level(logging.INFO, logger="stitch"):
        sized = compile_tiny(root, compile_sizes=[4])
    assert "config field compile_sizes: [] there, [4] here" in sized.why_cold
    logged = [r.getMessage() for r in caplog.records if "starts cold" in r.getMessage()]
    assert len(logged) == 1 and sized.why_cold in logged[0]
    # (b) an edited model: one layer fewer; the graph's first differing line
    edited = compile_tiny(root, LlamaConfig(num_layers=1))
    assert edited.why_cold.startswith("nearest entry ")
    assert "graph: first differing line #" in edited.why_cold
    assert "config field" not in edited.why_cold
    # (c) another torch: an entry copied from a machine with torch 2.11
    # (only its factors can say so here), and the CLI on both.
    (plain,) = [e for e in entries(root) if Path(first.cache_dir) == e]
    foreign = root / ("f" * 24) / "rank_0"
    shutil.copytree(plain, foreign)
    recorded = read_factors(str(foreign))
    older = msgspec.structs.replace(
        recorded, versions={**recorded.versions, "torch": "2.11.0"}
    )
    (foreign / FACTORS_FILE).write_bytes(codec.encode(older))
    assert main(["cache", "explain", str(plain), str(foreign)]) == 0
    assert f"torch 2.11.0 there, {torch.__version__} here" in capsys.readouterr().out
    # One entry: compared with the nearest other one of its root.
    assert main(["cache", "explain", edited.cache_dir]) == 0
    assert "graph: first differing line #" in capsys.readouterr().out
