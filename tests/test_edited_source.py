"""An edited stitching file runs in place of the emitted one
(``CompilationConfig(stitching_source=PATH)``, NOTE: [an edited stitching file
runs in place of the emitted one] in runtime/edited_source.py): the same pieces,
warm from the cache, the edit's own lines running; a bad edit is refused before
the first forward, naming its file and line; the cache keeps the emitted source
and starts warm without the edit."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from stitch.core.errors import StitchLoadError
from stitch.runtime import CompilationConfig, StitchBackend
from stitch.runtime.cli.inspect_job import inspect_cache
from stitch.runtime.examples import build_llama
from stitch.runtime.profiling import Profiler
from stitch.runtime.store.digests import file_hash
from stitch.runtime.store.index import INDEX_FILE

from backend_support import (
    INDUCTOR_TOL,
    TINY,
    compile_model,
    eager_and_compiled,
    inputs,
    run_fresh,
)

pytestmark = pytest.mark.usefixtures("dynamo_state")

COUNTER = "    print('stitched forward', flush=True)\n"
# The statement the counter goes before: the function's first.
FIRST = "    # the runnables for this runtime size"


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One cold compile (Inductor, every piece before the first output) into
    a cache of the module's own: its entry, its emitted source, its outputs."""
    root = tmp_path_factory.mktemp("cache")
    model = build_llama(TINY)
    be, fn = compile_model(model, config(root))
    outputs = [eager_and_compiled(model, fn, TINY, n) for n in (8, 3)]
    (source,) = root.rglob("execution_fn.py")
    index = source.with_name(INDEX_FILE)
    return {
        "root": root,
        "model": model,
        "source": source,
        "emitted": source.read_bytes(),
        "index": index,
        "index_bytes": index.read_bytes(),
        "outputs": [out for _, out in outputs],
    }


def config(root: Path, **fields: Any) -> CompilationConfig:
    return CompilationConfig(cache_dir=str(root), tiered_start=False, **fields)


def edit(cold: dict[str, Any], tmp_path: Path, change: Any) -> Path:
    text = cold["emitted"].decode()
    assert FIRST in text
    edited = change(text.replace(FIRST, COUNTER + FIRST, 1))
    path = tmp_path / "edited_execution_fn.py"
    path.write_text(edited, encoding="utf-8")
    return path


def forwards(cold: dict[str, Any], **fields: Any) -> tuple[Any, list[torch.Tensor]]:
    model = cold["model"]
    be, fn = compile_model(model, config(cold["root"], **fields))
    outs = []
    for n, want in zip((8, 3), cold["outputs"], strict=True):
        ref, out = eager_and_compiled(model, fn, TINY, n)
        torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
        torch.testing.assert_close(out, want, rtol=0, atol=0)  # the same pieces
        outs.append(out)
    return be, outs


def test_edited_file_runs_in_place_of_the_emitted_one(
    cold: dict[str, Any], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = edit(cold, tmp_path, lambda text: text)
    capfd.readouterr()
    be, _ = forwards(cold, stitching_source=str(path))
    assert capfd.readouterr().out.count("stitched forward") == 2
    (compiled,) = be.compiled
    assert compiled.warm  # the pieces of the cold compile, from the cache
    assert compiled.fn.__code__.co_filename == str(path)
    # The cache keeps the emitted source, and an entry read warm is not
    # rewritten (a saved forward would refuse it).
    assert cold["source"].read_bytes() == cold["emitted"]
    assert cold["index"].read_bytes() == cold["index_bytes"]
    # Without the edit, the same cache starts warm on the emitted source.
    be, _ = forwards(cold)
    assert be.compiled[0].warm and capfd.readouterr().out == ""


def test_an_entry_written_while_an_edit_ran_says_so(
    cold: dict[str, Any], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = edit(cold, tmp_path, lambda text: text)
    fresh = {**cold, "root": tmp_path / "cache"}
    capfd.readouterr()
    be, _ = forwards(fresh, stitching_source=str(path))
    assert not be.compiled[0].warm
    assert capfd.readouterr().out.count("stitched forward") == 2
    (source,) = fresh["root"].rglob("execution_fn.py")
    assert source.read_bytes() == cold["emitted"]  # the emitted source, kept
    out = io.StringIO()
    assert inspect_cache(str(fresh["root"]), out) == 0, out.getvalue()
    sha = file_hash(str(path))
    assert f"edited stitching source ran: {path} (sha256 {sha})" in out.getvalue()
    # Without the edit, that cache starts warm with the same numbers.
    be, _ = forwards(fresh)
    assert be.compiled[0].warm and capfd.readouterr().out == ""


def test_a_traceback_shows_the_edited_line(
    cold: dict[str, Any], tmp_path: Path
) -> None:
    path = edit(
        cold,
        tmp_path,
        lambda text: text.replace(COUNTER, "    raise RuntimeError('edited')\n"),
    )
    be, fn = compile_model(
        cold["model"], config(cold["root"], stitching_source=str(path))
    )
    with pytest.raises(RuntimeError, match="edited") as info:
        eager_and_compiled(cold["model"], fn, TINY, 8)
    frames = [f for f in info.traceback if str(f.path) == str(path)]
    assert frames and "raise RuntimeError('edited')" in str(frames[-1].statement)


def _drop_piece(text: str) -> str:
    m = re.search(r"^    (submod_\d+), (.+) = __vllm_\w+__", text, re.M)
    assert m is not None
    return text.replace(m.group(0), m.group(0).replace(m.group(1) + ", ", "", 1), 1)


def _drop_parameter(text: str) -> str:
    return re.sub(r"(def execution_fn\(\n)    \w+,\n", r"\1", text, count=1)


BAD_EDITS = {
    "syntax error": (
        lambda text: text.replace(COUNTER, "    print((\n"),
        r"syntax error: .*; the emitted source has there",
    ),
    "a parameter dropped": (
        _drop_parameter,
        r"execution_fn takes \d+ parameter\(s\); the emitted source's takes \d+",
    ),
    "a piece missing": (
        _drop_piece,
        r"missing piece\(s\) submod_\d+; the emitted source's line \d+: 'submod_",
    ),
    "a piece extra": (
        lambda text: re.sub(
            r"^(    submod_\d+), ", r"\1, submod_99, ", text, count=1, flags=re.M
        ),
        r"piece\(s\) the compile has not: submod_99",
    ),
    "a constant slot past the end": (
        lambda text: text.replace(COUNTER, "    __vllm_consts__[7]\n" + COUNTER),
        r"reads __vllm_consts__\[7\], but the emitted source has 0 constant slot",
    ),
}


@pytest.mark.parametrize("case", list(BAD_EDITS))
def test_a_bad_edit_is_refused_naming_its_line(
    cold: dict[str, Any], tmp_path: Path, case: str
) -> None:
    change, message = BAD_EDITS[case]
    path = edit(cold, tmp_path, change)
    be, fn = compile_model(
        cold["model"], config(cold["root"], stitching_source=str(path))
    )
    with pytest.raises(Exception) as info:  # Dynamo wraps the backend's error
        eager_and_compiled(cold["model"], fn, TINY, 8)
    error: BaseException | None = info.value
    while error is not None and not isinstance(error, StitchLoadError):
        error = error.__cause__ or error.__context__
    assert error is not None, info.value
    assert re.match(rf"{re.escape(str(path))}:\d+: ", str(error)), str(error)
    assert re.search(message, str(error)), str(error)
    # Nothing of the cache changed: it starts warm without the edit.
    assert cold["source"].read_bytes() == cold["emitted"]
    be, _ = forwards(cold)
    assert be.compiled[0].warm


def test_a_profile_times_the_edited_files_pieces(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """NOTE: [a profile of an edited stitching file]: the edit runs as it is,
    each compiled piece timed around its call."""
    model = build_llama(TINY)
    fields = {"backend": "eager", "disable_cache": True, "tiered_start": False}
    be, fn = compile_model(model, CompilationConfig(**fields))
    eager_and_compiled(model, fn, TINY, 8)
    emitted = be.compiled[0]
    path = tmp_path / "edited.py"
    path.write_text(emitted.code.replace(FIRST, COUNTER + FIRST, 1), encoding="utf-8")
    profiler = Profiler()
    backend = StitchBackend(
        CompilationConfig(**fields, stitching_source=str(path)), profiler=profiler
    )
    fn = torch.compile(model, backend=backend, fullgraph=True)
    capfd.readouterr()
    for n in (8, 3):
        args = inputs(TINY, n, "dynamic")
        profiler.size = n
        ref = run_fresh(model, model, args)
        model.reset_kv_caches()
        torch.testing.assert_close(profiler.call(fn, *args), ref, **INDUCTOR_TOL)
    assert capfd.readouterr().out.count("stitched forward") == 2
    sp8, sp3 = sorted(profiler.profile().sizes, key=lambda s: s.size, reverse=True)
    compiled = [r.name for r in emitted.reports if not r.splitting]
    for sp in (sp8, sp3):
        assert sp.forwards == 1
        names = sorted(r.name.rpartition(".")[2] for r in sp.pieces)  # g1.submod_0
        assert names == sorted(compiled), len(backend.compiled)
        assert all(r.us > 0 and r.kind == "compiled" for r in sp.pieces)


def test_stitch_check_source_names_the_stitching_source_and_its_edit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The loop of docs/compiling.md: emit, edit, run, check (an edit that
    scales the output)."""
    from stitch.runtime.cli.main import main

    common = ["--example", "two_layer", "--backend", "eager", "--sizes", "1,8"]
    emitted = tmp_path / "two_layer.py"
    assert main(["emit", "--example", "two_layer", "-o", str(emitted)]) == 0
    text = emitted.read_text(encoding="utf-8")
    m = re.search(r"^    return \((\w+),\)$", text, re.M)
    assert m is not None
    scaled = f"    return ({m.group(1)} * 2,)"
    edited = tmp_path / "edited.py"
    edited.write_text(text.replace(m.group(0), scaled), encoding="utf-8")
    capsys.readouterr()
    cache = ["--cache-dir", str(tmp_path / "cache"), "--source", str(edited)]
    torch._dynamo.reset()
    assert main(["run", *common, *cache]) == 1  # beyond tolerance
    out = capsys.readouterr().out
    assert f"ran in its place: {edited} (--source)" in out
    assert f"--source {edited}" in out  # the check command it suggests
    torch._dynamo.reset()
    assert main(["check", *common, *cache]) == 1
    out = capsys.readouterr().out
    assert f"the difference arose in the stitching source, the edited {edited}" in (out)
    assert f"-{m.group(0)}\n+{scaled}\n" in out  # the unified diff's lines
    # Without the edit, the same cache gives eager's numbers.
    torch._dynamo.reset()
    assert main(["check", *common, "--cache-dir", str(tmp_path / "cache")]) == 0
