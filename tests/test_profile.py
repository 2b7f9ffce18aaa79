"""Per-piece profiles: the profiling variant of the emitted source, the
:class:`Profiler` behind ``StitchBackend(profiler=...)`` and ``stitch profile``."""

from __future__ import annotations

import ast
import io
from typing import Any

import black
import pytest
import torch
from test_golden import assert_same_outputs, run

from stitch.codegen import generate_execution_code, lower_execution
from stitch.codegen.emit import BLACK_MODE, render_module_with_black
from stitch.core.contract import RANGES_NAME
from stitch.core.errors import StitchLoadError
from stitch.runtime import CompilationConfig, StitchBackend, compile_execution_fn
from stitch.runtime.cli.main import main
from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs
from stitch.runtime.profiling import PieceInfo, Profile, Profiler, _SizeStats

from backend_support import markdown_rows
from models import CASES, emit_case


class Recorder:
    """A ``__stitch_ranges__`` that writes down the order of its calls."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def begin_forward(self) -> None:
        self.events.append(("forward",))

    def end_forward(self) -> None:
        self.events.append(("end_forward",))

    def begin(self, piece: str, path: str) -> None:
        self.events.append(("begin", piece, path))

    def end(self) -> None:
        self.events.append(("end",))


def _piece_calls(code: str) -> list[str]:
    """The piece names called at the top level of execution_fn, in order (calls
    of a local bound from the pieces, of an inlined function, or of an op alias
    on a line of its own)."""
    tree = ast.parse(code)
    fn = next(
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name == "execution_fn"
    )
    calls = []
    for stmt in fn.body:
        value = stmt.value if isinstance(stmt, (ast.Assign, ast.Expr)) else None
        if isinstance(value, ast.Subscript):
            value = value.value  # ``x = submod_3(...)[0]``
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            calls.append(value.func.id)
        elif isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
            if isinstance(value.func.value, ast.Name):
                calls.append(f"{value.func.value.id}.{value.func.attr}")
    return calls


@pytest.mark.parametrize("name", ["llama_3_layer", "many_pieces", "kwargs"])
def test_profiling_variant_brackets_every_piece_call(name: str) -> None:
    emitted = emit_case(name)
    code, names, consts = generate_execution_code(emitted.split_gm, profile=True)
    assert names == emitted.submod_names and len(consts) == len(emitted.consts)
    calls = _piece_calls(code)
    assert calls[0] == f"{RANGES_NAME}.begin_forward"
    assert calls[-1] == f"{RANGES_NAME}.end_forward"
    serving = [c for c in _piece_calls(emitted.code)]
    inner = calls[1:-1]
    # Every call of the serving source sits between begin and end, in order.
    assert [c for c in inner if not c.startswith(RANGES_NAME)] == serving
    for i, c in enumerate(inner):
        if not c.startswith(RANGES_NAME):
            assert inner[i - 1] == f"{RANGES_NAME}.begin"
            assert inner[i + 1] == f"{RANGES_NAME}.end"
    # A del never sits inside a range: freeing counts as stitching.
    lines = [line.strip() for line in code.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("del "):
            assert not lines[i - 1].startswith(("submod_", "stitch_"))


@pytest.mark.parametrize("name", list(CASES))
def test_profiling_variant_is_what_black_writes(name: str) -> None:
    emitted = emit_case(name)
    context, _, _ = lower_execution(emitted.split_gm, profile=True)
    code, _, _ = generate_execution_code(emitted.split_gm, profile=True)
    assert code == render_module_with_black(context)
    assert black.format_str(code, mode=BLACK_MODE) == code


@pytest.mark.parametrize("name", ["llama_3_layer", "two_layer_attention"])
def test_profiling_variant_computes_what_the_serving_source_does(name: str) -> None:
    emitted = emit_case(name)
    case = emitted.case
    code, names, consts = generate_execution_code(emitted.split_gm, profile=True)
    pieces = dict(emitted.split_gm.named_children())
    recorder = Recorder()
    fn = compile_execution_fn(code, pieces, names, consts, ranges=recorder)
    serving = compile_execution_fn(emitted.code, pieces, names, emitted.consts)
    inputs = case.make_inputs(case.seeds[0])
    assert_same_outputs(run(case, serving, inputs), run(case, fn, inputs), exact=True)
    begins = [e[1] for e in recorder.events if e[0] == "begin"]
    top = [n.target for n in emitted.split_gm.graph.nodes if n.op == "call_module"]
    assert begins == top
    assert recorder.events[0] == ("forward",) and recorder.events[-1] == (
        "end_forward",
    )


def test_loader_refuses_mismatched_ranges() -> None:
    emitted = emit_case("llama_3_layer")
    pieces = dict(emitted.split_gm.named_children())
    code, names, consts = generate_execution_code(emitted.split_gm, profile=True)
    with pytest.raises(StitchLoadError, match="profiling variant"):
        compile_execution_fn(code, pieces, names, consts)
    with pytest.raises(StitchLoadError, match="takes no"):
        compile_execution_fn(
            emitted.code, pieces, names, emitted.consts, ranges=Recorder()
        )


def _profiled_llama(layers: int = 2) -> tuple[Any, Profiler, StitchBackend, Any]:
    cfg = LlamaConfig(num_layers=layers)
    model = build_llama(cfg)
    profiler = Profiler()
    backend = StitchBackend(
        CompilationConfig(
            backend="eager", disable_cache=True, max_num_batched_tokens=cfg.max_seqs
        ),
        profiler=profiler,
    )
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    return (model, cfg), profiler, backend, compiled


def test_profiler_accounts_for_every_piece_and_the_whole_forward() -> None:
    (model, cfg), profiler, backend, compiled = _profiled_llama(layers=2)
    with torch.no_grad():
        for n in (3, 8):
            ids, pos = llama_inputs(cfg, n, seed=n)
            for t in (ids, pos):
                torch._dynamo.decorators.mark_unbacked(t, 0)
            model.reset_kv_caches()
            expected = model(ids, pos)
            model.reset_kv_caches()
            profiler.size = n
            actual = profiler.call(compiled, ids, pos)
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
            for _ in range(2):
                profiler.call(compiled, ids, pos)
    assert len(backend.compiled) == 1
    reports = backend.compiled[0].reports
    profile = profiler.profile()
    assert [sp.size for sp in profile.sizes] == [3, 8]
    for sp in profile.sizes:
        assert sp.forwards == 3
        assert [r.name for r in sp.pieces] == [r.name for r in reports]
        kinds = {r.name: r.kind for r in sp.pieces}
        assert [k for k in kinds.values()].count("splitting") == 2  # one per layer
        for r in reports:
            assert kinds[r.name] == ("splitting" if r.splitting else "compiled")
        assert all(r.us > 0 for r in sp.pieces)
        parts = sum(r.us for r in sp.summary)
        # The four parts add up to the model call (clamped parts aside).
        assert parts == pytest.approx(sp.total_us, rel=0.02)
        assert sum(r.share(sp.total_us) for r in sp.summary) == pytest.approx(
            100.0, rel=0.02
        )
    table = profile.table()
    assert "guards and frame" in table and "stitching" in table
    assert profile.html("t").count("<rect") == sum(
        len(sp.pieces) + 2 for sp in profile.sizes
    )


def test_torch_profiler_trace_names_the_pieces() -> None:
    (model, cfg), profiler, backend, compiled = _profiled_llama(layers=1)
    ids, pos = llama_inputs(cfg, 4, seed=0)
    with torch.no_grad():
        compiled(ids, pos)
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]
        ) as p:
            compiled(ids, pos)
    names = {e.key for e in p.key_averages()}
    reports = backend.compiled[0].reports
    # A loop over no pieces would check nothing: the 1-layer model has both kinds.
    assert {r.splitting for r in reports} == {True, False}, reports
    for r in reports:
        assert f"{r.name} {r.module_path}".strip() in names


def test_stitch_profile_command(tmp_path: Any) -> None:
    out = io.StringIO()
    html = tmp_path / "profile.html"
    import contextlib

    with contextlib.redirect_stdout(out):
        status = main(
            [
                "profile",
                "--example",
                "llama",
                "--layers",
                "2",
                "--backend",
                "eager",
                "--sizes",
                "1,5",
                "--iters",
                "2",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--html",
                str(html),
            ]
        )
    text = out.getvalue()
    assert status == 0, text
    rows = markdown_rows(text)
    header = ["piece", "kind", "modules", "us/forward", "share"]
    assert rows.count(header) == 2  # one table per size
    assert "size 1:" in text and "size 5:" in text
    # Two layers' attention, at each of the two sizes.
    assert [r[1] for r in rows].count("splitting") == 2 * 2
    assert [r[0] for r in rows].count("**guards and frame**") == 2
    assert "<svg" in html.read_text()


def test_stitch_profile_decode_steps(tmp_path: Any) -> None:
    pytest.importorskip("transformers")
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(
            [
                "profile",
                "--hf",
                "llama",
                "--decode",
                "--backend",
                "eager",
                "--sizes",
                "2",
                "--iters",
                "2",
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
    text = out.getvalue()
    assert status == 0, text
    assert "size decode batch 2:" in text
    # 2 layers: two attention rows in the decode graph.
    attention = [
        r
        for r in markdown_rows(text)
        if r[1] == "splitting" and r[2].startswith("model.layers.")
    ]
    assert len(attention) == 2


def test_profile_page_escapes_what_it_is_given() -> None:
    stats = {
        8: _SizeStats(
            forwards=1,
            calls=1,
            call_ns=4000,
            stitched_ns=3000,
            pieces={(0, "submod_0"): 1000, (0, "submod_1"): 1000},
        )
    }
    pieces = {
        (0, "submod_0"): PieceInfo("compiled", "layers.<0> & more"),
        (0, "submod_1"): PieceInfo("splitting", "layers.0.attn"),
    }
    page = Profile.build(stats, pieces).html("a <b> & c")
    assert "<b>" not in page and "<title>a &lt;b&gt; &amp; c</title>" in page
    assert "layers.&lt;0&gt; &amp; more" in page
    # One segment per piece, then stitching and guards and frame.
    assert page.count("<rect") == 2 + 2
    assert 'fill="#f58518"' in page  # the splitting piece's colour
