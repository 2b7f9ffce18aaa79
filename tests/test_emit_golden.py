"""The main job's golden: what ``stitch emit`` prints for the README's model.

``golden/test_emit_golden/llama_2_layer.py`` is what ``stitch emit --example
llama --layers 2`` prints: the README's first compiled model (two layers, the
token dimension of ``input_ids`` and ``positions`` unbacked, ``fullgraph=True``)
through a real compile, Dynamo's graph with readable names (NOTE: [emit shows
what a compile runs] in runtime/cli/emit_job.py).  The README's excerpt at its
top is cut from it (tests/test_readme.py checks the cut).  The golden is also
the text a compile with Inductor pieces writes to its cache as
``execution_fn.py``, and, loaded in place of that source, it computes what the
model computes eagerly.

Update after an intended change with::

    python -m pytest tests/test_emit_golden.py --snapshot-update
"""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import GOLDEN_DIR

from stitch.runtime import CompilationConfig, StitchBackend, compile_execution_fn
from stitch.runtime.cli import main
from stitch.runtime.counter import compilation_counter
from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs
from stitch.runtime.store.index import SOURCE_FILE

pytestmark = pytest.mark.usefixtures("dynamo_state")

README_MODEL = LlamaConfig(num_layers=2)
EMIT_CASES = {"llama_2_layer": ("--example", "llama", "--layers", "2")}
GOLDEN = GOLDEN_DIR / Path(__file__).stem


@functools.cache
def emitted(case: str) -> str:
    """What ``stitch emit`` prints for ``case`` (compiled once a session)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["emit", *EMIT_CASES[case]]) == 0
    return out.getvalue()


@pytest.mark.parametrize("case", list(EMIT_CASES))
def test_emit_golden(case: str, golden: Any) -> None:
    golden(emitted(case))


def _marked(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The README's inputs of ``n`` tokens, their token dimension unbacked."""
    inputs = llama_inputs(README_MODEL, n, seed=seed)
    for t in inputs:
        torch._dynamo.decorators.mark_unbacked(t, 0)
    return inputs


@pytest.mark.slow
def test_the_golden_is_what_a_compile_writes_and_it_runs(tmp_path: Path) -> None:
    """The README's model compiled as the README compiles it (Inductor pieces,
    no tiered start): its cache's execution_fn.py is what ``stitch emit``
    prints and the golden, and the golden, bound to the compiled pieces,
    computes what eager does."""
    path = GOLDEN / "llama_2_layer.py"
    if not path.exists():
        pytest.fail(
            f"{path} is missing; run tests/test_emit_golden.py --snapshot-update"
        )
    golden = path.read_text(encoding="utf-8")
    model, eager = build_llama(README_MODEL), build_llama(README_MODEL)
    config = CompilationConfig(
        max_num_batched_tokens=README_MODEL.max_seqs,
        tiered_start=False,
        cache_dir=str(tmp_path),
    )
    backend = StitchBackend(config)
    compiled_model = torch.compile(model, backend=backend, fullgraph=True)
    before = compilation_counter.num_inductor_compiles
    with torch.no_grad():
        compiled_model(*_marked(8, seed=0))
    (compiled,) = backend.compiled
    assert compilation_counter.num_inductor_compiles > before  # Inductor pieces
    written = Path(compiled.cache_dir, SOURCE_FILE).read_text(encoding="utf-8")
    # What stitch emit printed (its pieces run eagerly) is what this compile wrote.
    assert written == compiled.code == emitted("llama_2_layer") == golden
    fn = compile_execution_fn(
        golden, compiled.backends, compiled.submod_names, compiled.consts
    )
    sources = []
    for node in compiled.split_gm.graph.find_nodes(op="placeholder"):
        name = node.meta["grapharg"].source.name
        sources.append(name() if callable(name) else name)
    for n in (8, 3, 1):
        model.reset_kv_caches()
        eager.reset_kv_caches()
        ids, positions = _marked(n, seed=n)
        scope = {"L": {"self": model, "input_ids": ids, "positions": positions}}
        args = [eval(source, scope) for source in sources]  # noqa: S307 - Dynamo's
        with torch.no_grad():
            (got,) = fn(*args)
            expected = eager(ids, positions)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
