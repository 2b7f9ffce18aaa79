"""``stitch.runtime.aot_compile``: a warm process runs the saved forward without Dynamo.

Fresh processes are the point here (``aot_worker.py``): a cold one compiles and
saves; a warm one, with Inductor's cache empty, must load the forward without
importing Dynamo, Inductor or the code generator's black and jinja2, build no kernel, and give the cold process's
outputs bit for bit; after the model's source file is edited, the next one
warns once and compiles again (hitting the Stitch cache: the graph is the same).
The model is defined in a file of the test's own so that its code can change.
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from stitch.runtime import CompilationConfig, StitchBackend, StitchFunction, aot_compile
from stitch.runtime.compat.dynamo import aot_compile_enabled
from stitch.runtime.examples import llama_inputs
from stitch.runtime.saved.record import dynamic_spec, factors, stale_reasons
from stitch.runtime.store.records import AOTRecord, SavedFunction
from stitch.runtime.store.trust import StitchCacheTrustError

from aot_support import MODEL_SOURCE, PIECES, SIZES, run_worker
from backend_support import INDUCTOR_TOL


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("aot")
    model_file = tmp / "aot_test_model.py"
    model_file.write_text(MODEL_SOURCE)
    spec = {
        "model_file": str(model_file),
        "cache_dir": str(tmp / "cache"),
        "sizes": SIZES,
    }
    # The cold process compiles with the test run's Inductor cache: what it
    # checks (Stitch's compile count, the saved forward) does not depend on
    # whether Inductor finds the kernels there.
    cold = run_worker({**spec, "outputs": str(tmp / "cold.pt")})
    # A fresh container: the Stitch cache shipped, Inductor's cache empty.
    empty = tmp / "inductor-empty"
    warm = run_worker({**spec, "outputs": str(tmp / "warm.pt")}, empty)
    model_file.write_text(MODEL_SOURCE.replace("# version 1", "# version 2"))
    edited = run_worker(spec)
    again = run_worker(spec, tmp / "inductor-again")
    return {
        "tmp": tmp,
        "model_file": model_file,
        "cache": tmp / "cache",
        "cold": cold,
        "warm": warm,
        "edited": edited,
        "again": again,
        "empty_inductor": empty,
        "cold_out": torch.load(tmp / "cold.pt"),
        "warm_out": torch.load(tmp / "warm.pt"),
    }


@pytest.mark.slow
def test_cold_process_compiles_and_saves(runs: dict[str, Any]) -> None:
    cold = runs["cold"]
    assert cold["warnings"] == []
    assert cold["warm"] is False and cold["path"]
    assert cold["counter"]["num_inductor_compiles"] == PIECES
    assert cold["plain_function"]  # guard-free in the cold process too
    # It traced, compiled and generated the stitching source.
    assert cold["imported"] == ["black", "jinja2", "torch._dynamo", "torch._inductor"]
    assert max(cold["diffs"].values()) < INDUCTOR_TOL["atol"]
    # A CPU graph: its compile probed the CPU's vector ISA beside the split.
    assert cold["isa_probe"] is True


@pytest.mark.slow
def test_warm_process_imports_no_compiler_and_no_code_generator(
    runs: dict[str, Any],
) -> None:
    warm = runs["warm"]
    assert warm["warnings"] == []
    assert warm["warm"] is True
    assert warm["imported"] == []
    assert warm["isa_probe"] is False
    assert warm["plain_function"]
    counter = warm["counter"]
    assert counter.get("num_backend_compilations", 0) == 0
    assert counter.get("num_inductor_compiles", 0) == 0
    assert counter["num_prebuilt_loads"] == PIECES
    # Nothing was built or even looked up in Inductor's (empty) cache.
    empty = runs["empty_inductor"]
    assert not empty.exists() or not any(empty.iterdir())


@pytest.mark.slow
def test_warm_process_gives_the_cold_outputs(runs: dict[str, Any]) -> None:
    for n in SIZES:
        assert torch.equal(runs["warm_out"][n], runs["cold_out"][n]), n
    assert max(runs["warm"]["diffs"].values()) < INDUCTOR_TOL["atol"]


@pytest.mark.slow
def test_edited_model_code_recompiles_with_one_warning(runs: dict[str, Any]) -> None:
    edited = runs["edited"]
    assert edited["warm"] is False
    (warning,) = edited["warnings"]
    assert "stale" in warning and "model code changed" in warning
    assert str(runs["model_file"]) in warning
    # Dynamo traced again; the graph is the same, so every piece hit the cache.
    assert edited["counter"]["num_backend_compilations"] == 1
    assert edited["counter"].get("num_inductor_compiles", 0) == 0
    assert edited["counter"]["num_cache_hits"] == PIECES
    # ... and saved the function again: the next process is warm.
    again = runs["again"]
    assert again["warm"] is True and again["warnings"] == [] and again["imported"] == []


# -- in this process, on the cache the workers filled --------------------------------------


def load_model(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("aot_test_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["aot_test_model"] = module
    spec.loader.exec_module(module)
    return module


def marked_inputs(module: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, pos = llama_inputs(module.CFG, n)
    for t in (ids, pos):
        torch._dynamo.decorators.mark_unbacked(t, 0)
    return ids, pos


@pytest.mark.slow
def test_guards_switch_checks_every_call(runs: dict[str, Any]) -> None:
    module = load_model(runs["model_file"])
    model = module.build()
    ids, pos = llama_inputs(module.CFG, 4)
    config = CompilationConfig(cache_dir=str(runs["cache"]))
    with torch.no_grad():
        guarded = aot_compile(
            model, (ids, pos), config, dynamic_dims={0: [0], 1: [0]}, guards=True
        )
        assert guarded.warm and guarded.guards
        model.reset_kv_caches()
        out = guarded(ids, pos)
        model.reset_kv_caches()
        torch.testing.assert_close(out, model(ids, pos), **INDUCTOR_TOL)
        # An input the graph was not traced for: the guard says so.
        with pytest.raises(RuntimeError, match="[Gg]uard"):
            guarded(ids.to(torch.int32), pos)


def test_stale_reasons_name_what_changed() -> None:
    config = CompilationConfig(compile_sizes=[4])
    args = (torch.zeros(3, dtype=torch.int64), torch.zeros(3, 2))
    dims = dynamic_spec(args, {0: [0]})
    function = SavedFunction("backend", {}, (), None, None, False)
    stitched = {"entry": "entry", "cache_root": "root"}
    record = AOTRecord(
        "model", factors(config, args, dims), (), function, stitched, None
    )
    assert stale_reasons(record, factors(config, args, dims)) == []
    other = CompilationConfig(compile_sizes=[8])
    (reason,) = stale_reasons(record, factors(other, args, dims))
    assert reason.startswith("config hash")
    graphs = CompilationConfig(compile_sizes=[4], cudagraph_mode="FULL")
    (reason,) = stale_reasons(record, factors(graphs, args, dims))
    assert reason == "CUDA graph settings cudagraph_mode 'PIECEWISE' -> 'FULL'"
    wider = (args[0], torch.zeros(3, 2, 1))
    (reason,) = stale_reasons(
        record, factors(config, wider, dynamic_spec(wider, {0: [0]}))
    )
    assert reason.startswith("input dtypes/ranks")
    record.factors["torch"] = "1.0"
    assert any(
        r.startswith("torch version '1.0'")
        for r in stale_reasons(record, factors(config, args, dims))
    )


def test_dynamic_dims_are_checked() -> None:
    with pytest.raises(Exception, match="no dimension 1"):
        dynamic_spec((torch.zeros(3),), {0: [1]})


@pytest.mark.slow
def test_torch_aot_compile_saves_a_reference(
    runs: dict[str, Any], tmp_path: Path
) -> None:
    """``torch.compile(..., backend=StitchBackend(...)).aot_compile`` with torch's own save/load."""
    module = load_model(runs["model_file"])
    model = module.build()
    ids, pos = marked_inputs(module, 8)
    # The saved reference names a whole entry: compiled in the call.
    config = CompilationConfig(cache_dir=str(runs["cache"]), tiered_start=False)
    backend = StitchBackend(config)
    torch._dynamo.reset()
    # torch 2.11 and 2.12 offer aot_compile only under a config switch.
    with torch.no_grad(), aot_compile_enabled():
        compiled = torch.compile(
            type(model).forward, backend=backend, fullgraph=True
        ).aot_compile(((model, ids, pos), {}))
    stitched = compiled._artifacts.compiled_fn
    assert isinstance(stitched, StitchFunction)
    saved = StitchFunction.serialize_compile_artifacts(stitched)
    # A reference to the cache entry, not a copy of it.
    reference = ast.literal_eval(saved.decode())
    assert len(saved) < 4096
    assert str(runs["cache"] / reference["entry"]) == backend.compiled[0].cache_dir
    path = tmp_path / "forward.aot"
    compiled.save_compiled_function(str(path))
    with open(path, "rb") as f:
        loaded = torch.compiler.load_compiled_function(
            f, f_globals=type(model).forward.__globals__
        )
    assert isinstance(loaded._artifacts.compiled_fn, StitchFunction)
    # Serving-loop inputs carry no Dynamo marks (the guards check that too).
    ids, pos = llama_inputs(module.CFG, 5)
    with torch.no_grad():
        model.reset_kv_caches()
        out = loaded(model, ids, pos)
        model.reset_kv_caches()
        torch.testing.assert_close(out, model(ids, pos), **INDUCTOR_TOL)


@pytest.mark.slow
def test_a_record_others_can_write_is_refused(
    runs: dict[str, Any], tmp_path: Path
) -> None:
    """The saved bytecode runs as this user: its folder is trusted like the cache's."""
    cache = tmp_path / "cache"
    shutil.copytree(runs["cache"], cache)
    (record,) = cache.glob("aot/*/rank_0/function.py")
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE(record.parent.stat().st_mode) == 0o700
    record.chmod(0o620)
    module = load_model(runs["model_file"])
    ids, pos = llama_inputs(module.CFG, 4)
    config = CompilationConfig(cache_dir=str(cache))
    with pytest.raises(
        StitchCacheTrustError, match=r"function\.py is writable by its group"
    ):
        aot_compile(module.build(), (ids, pos), config, dynamic_dims={0: [0], 1: [0]})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            lambda r: r["function"].update(light="yes"),
            "field function.light: expected bool, got str ('yes')",
        ),
        (lambda r: r.pop("stitched"), "field stitched: is missing"),
        (lambda r: r["stitched"].pop("entry"), "stitched.entry is missing"),
        (
            lambda r: r.update(code=[("m", "p")]),
            "field code[0]: expected array of length 3",
        ),
        (
            lambda r: r["function"].pop("bytecode_sha256"),
            "bytecode_sha256 is missing",
        ),
    ],
)
def test_a_malformed_record_is_refused_naming_the_field(
    runs: dict[str, Any], tmp_path: Path, change: Any, says: str
) -> None:
    """What loading reads is checked when the record is read: a damaged record is
    a StitchCacheError naming the file and the field (the caller compiles again),
    never a KeyError or TypeError from deep in the load."""
    from stitch.core.errors import StitchCacheError
    from stitch.runtime.saved.record import RECORD_FILE, read_record

    folder = tmp_path / "root" / "aot" / "model" / "rank_0"
    folder.parent.parent.mkdir(parents=True, mode=0o700)
    shutil.copytree(runs["cold"]["path"], folder)
    record = read_record(str(folder))
    assert record is not None and record.function.light is True
    data = ast.literal_eval((folder / RECORD_FILE).read_text())
    change(data)
    (folder / RECORD_FILE).write_text(repr(data) + "\n")
    with pytest.raises(StitchCacheError) as info:
        read_record(str(folder))
    assert says in str(info.value) and RECORD_FILE in str(info.value)


def test_a_given_backend_compiles_and_reports(tmp_path: Path) -> None:
    """``aot_compile(backend=)``: that backend's compiled list reports the compile
    (the transformers engine's user sees their own backend), and a config or
    CUDA graphs beside it are refused, not silently dropped."""
    from stitch.core.errors import StitchConfigError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()).eval()
    x = torch.randn(4, 8)
    backend = StitchBackend(CompilationConfig(cache_dir=str(tmp_path)))
    compiled = aot_compile(model, (x,), backend=backend)
    assert compiled.backend is backend and len(backend.compiled) == 1
    torch.testing.assert_close(compiled(x), model(x), **INDUCTOR_TOL)
    with pytest.raises(StitchConfigError, match="give the backend alone"):
        aot_compile(model, (x,), CompilationConfig(), backend=backend)
    with pytest.raises(StitchConfigError, match="give the backend alone"):
        aot_compile(model, (x,), backend=backend, cudagraphs=StitchBackend().cudagraphs)
