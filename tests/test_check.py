"""``stitch check`` and ``check_model``: real faults, each named at its piece.

Eager pieces where Inductor is not the point (the check's runs, its verdicts,
the stale piece, CUDA graphs under the CPU emulation); Inductor for the faults
that only a compile makes (a wrong pass, looser numerics), marked slow.  The
transformers families are in tests/test_check_hf.py.
"""

from __future__ import annotations

import pytest
import torch

from stitch.runtime import CompilationConfig
from stitch.runtime.check import Checker, check_model
from stitch.runtime.check.compare import measure
from stitch.runtime.check.passes import served_static
from stitch.runtime.check.source_lines import piece_lines
from stitch.runtime.cudagraph import EmulatedGraphOps
from stitch.runtime.examples import LlamaConfig, build_llama
from stitch.runtime.pipeline.api import PiecewiseBackend
from stitch.runtime.pipeline.compilers import InductorAdapter
from stitch.runtime.targets import Target

from check_support import (
    Harmless,
    MatmulsInBF16,
    MulToAdd,
    ReadsStale,
    Toy,
    llama_forwards,
)

# See NOTE: [many compiles of one forward] in conftest.py.
pytestmark = pytest.mark.usefixtures("dynamo_state")

TWO = LlamaConfig(num_layers=2)
ONE = LlamaConfig(num_layers=1)
SIZES = [(1, 1), (3, 3), (8, 8)]


def eager_config(cfg: LlamaConfig = TWO, **fields: object) -> CompilationConfig:
    return CompilationConfig(
        backend="eager",
        disable_cache=True,
        max_num_batched_tokens=cfg.max_seqs,
        **fields,
    )


def test_a_correct_model_names_no_piece() -> None:
    torch._dynamo.reset()
    model = build_llama(TWO)
    caches = {name: b.clone() for name, b in model.named_buffers()}
    forwards = llama_forwards(TWO, SIZES)
    report = check_model(model, forwards, eager_config(), fullgraph=True)
    assert report.ok and report.first is None
    # Every run wrote the KV caches; the check leaves them as it found them.
    assert all(torch.equal(b, caches[name]) for name, b in model.named_buffers())
    assert [p.name for p in report.pieces] == ["submod_0", "submod_2", "submod_4"]
    assert all(p.calls == len(SIZES) for p in report.pieces)
    assert report.verdict().startswith("every piece agrees")
    assert [f.size for f in report.forwards] == [1, 3, 8]
    assert report.pieces[1].modules == "layers.0.self_attn .. layers.1.self_attn"


def test_a_stale_piece_is_named_and_the_pieces_after_it_say_it_came_from_earlier() -> (
    None
):
    """The piece reads the tensors of its first call at each shape (a replay
    on moved inputs, NOTE in check_support.ReadsStale): at the second forward
    of 8 tokens it returns the first one's numbers."""
    torch._dynamo.reset()
    model = build_llama(TWO)
    checker = Checker(eager_config())
    compiled = torch.compile(model, backend=checker.backend, fullgraph=True)
    forwards = llama_forwards(TWO, [(8, 1), (8, 2), (3, 3)])
    with torch.no_grad():
        compiled(*forwards[0].args)  # the compile
    (result,) = checker.backend.compiled
    result.backends["submod_2"] = ReadsStale(result.backends["submod_2"])
    report = checker.run(model, compiled, forwards)

    assert not report.ok
    first = report.first
    assert first is not None and first.name == "submod_2"
    assert first.arose_inside and first.output.beyond
    assert first.output.first.endswith("at size 8")
    # Where its call is in the emitted source, and the module comment above it.
    start, end = first.lines
    source = open(first.source_file).read().splitlines()
    assert source[start - 1].strip() == "# layers.0.self_attn .. layers.1.self_attn"
    assert "submod_2(" in source[start]
    after = report.pieces[2]
    assert after.inputs.beyond and not after.output.beyond and not after.arose_inside
    verdict = report.verdict()
    assert "first piece beyond tolerance: submod_2" in verdict
    assert f"lines {start}-{end} of {first.source_file}" in verdict
    assert "arose inside it" in verdict
    assert "NO" in report.table().splitlines()[3]  # the row of submod_2


def test_a_difference_from_between_the_pieces_came_from_earlier() -> None:
    """The splitting op gives other numbers at every call, so the second piece's
    inputs differ from the run on uncompiled pieces though every piece agrees
    with its uncompiled form."""
    torch._dynamo.reset()
    model = Toy("drift")
    config = eager_config(splitting_ops=["stitch_check_test::drift"])
    report = check_model(model, model.forwards([(4, 1), (6, 2)]), config)
    first = report.first
    assert first is not None and first.name == "submod_2"
    assert not first.output.beyond and first.inputs.beyond
    assert "came from earlier" in report.verdict()
    assert report.forwards[0].reference.beyond  # the stitched function drifts too


def test_piece_lines_follow_the_bound_names() -> None:
    code = (
        "def execution_fn(x, *, __vllm_submods__):\n"
        "    a_1, b = __vllm_submods__\n"
        "    # m0\n"
        "    y = a_1(\n"
        "        x,\n"
        "    )\n"
        "    b(y)\n"
        "    return (y,)\n"
    )
    assert piece_lines(code, ["submod_0", "submod_2"]) == {
        "submod_0": (3, 6),
        "submod_2": (7, 7),
    }


# -- CUDA graphs under the CPU emulation --------------------------------------------


def graph_config(**fields: object) -> CompilationConfig:
    return CompilationConfig(
        backend="eager",
        disable_cache=True,
        splitting_ops=["stitch_check_test::fresh"],
        cudagraph_capture_sizes=[4, 8],
        **fields,
    )


@pytest.mark.parametrize("copy_inputs", [False, True], ids=["moved", "copied"])
def test_a_graph_replayed_on_moved_inputs_is_named(copy_inputs: bool) -> None:
    """The splitting op allocates its output, so the second piece's input moves
    at every call; its graph replays on the address it was captured with,
    unless cudagraph_copy_inputs copies the new input there."""
    torch._dynamo.reset()
    model = Toy("fresh")
    report = check_model(
        model,
        model.forwards([(8, 1), (3, 2)]),
        graph_config(cudagraph_copy_inputs=copy_inputs),
        graph_ops=EmulatedGraphOps(),
    )
    first, second = report.pieces
    assert first.replay is not None and not first.replay.beyond
    assert second.replay is not None
    assert second.replay.beyond is not copy_inputs
    assert report.ok is copy_inputs
    # The piece itself is right: only its replay is not.
    assert not second.output.beyond
    if not copy_inputs:
        assert report.first is second
        assert "replays on moved or stale inputs" in report.verdict()
        assert report.forwards[0].replayed.beyond
        assert "replay abs err" in report.table()


def test_a_size_replayed_as_one_full_graph_is_noted_in_the_verdict() -> None:
    """Size 3 pads to 4, captured as one graph of the whole forward: its
    pieces replay inside it, where no replay of a piece is compared, and the
    report says so; size 8 replays piece by piece, checked, with no note."""
    torch._dynamo.reset()
    model = Toy("fresh")
    config = graph_config(
        cudagraph_copy_inputs=True,
        cudagraph_mode="FULL_AND_PIECEWISE",
        max_full_cudagraph_size=4,
    )
    report = check_model(
        model, model.forwards([(8, 1), (3, 2)]), config, graph_ops=EmulatedGraphOps()
    )
    assert report.ok
    assert all(p.replay is not None for p in report.pieces)  # size 8's replays
    note = (
        "size 3 replayed one full CUDA graph of the forward (captured at size 4): "
        "its pieces' replays were not checked, only the whole forward against eager"
    )
    assert report.notes == [note]
    # The verdict (what `stitch check` prints last) ends with it.
    assert report.verdict().splitlines()[-1] == f"note: {note}"
    assert report.verdict().startswith("every piece agrees")


def test_extra_rows_are_a_difference_unless_the_output_ran_padded() -> None:
    """Rows beyond the expected ones are padding only under CUDA graphs (a
    padded capture size); anywhere else they are a shape that differs."""
    want = torch.arange(12.0).reshape(4, 3)
    got = torch.cat([want, torch.full((2, 3), 7.0)])
    plain = measure(got, want, "output")
    assert plain.beyond and plain.abs == float("inf")
    assert plain.first == "output 0 is float32[6, 3], not float32[4, 3]"
    padded = measure(got, want, "output", padded=True)
    assert not padded.beyond and padded.abs == 0.0
    # Padding rows hide nothing in the rows that count.
    wrong = got.clone()
    wrong[0, 0] += 1.0
    assert measure(wrong, want, "output", padded=True).beyond


def test_the_search_compiles_for_the_size_where_serving_did() -> None:
    """A call at a compile size ran that size's runnable; any other, the general one."""

    def runnable(*args: object) -> None:
        return None

    general, sized = Target("general"), Target("size", 8, 8)
    served = PiecewiseBackend("submod_0", 0, {general: runnable, sized: runnable})
    assert served_static(served, [8, torch.zeros(8)])
    assert not served_static(served, [3, torch.zeros(3)])
    no_size = PiecewiseBackend("submod_0", None, {general: runnable})
    assert not served_static(no_size, [torch.zeros(8)])


# -- Inductor -----------------------------------------------------------------------


def record_compiles(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, bool]]:
    """(static, grad enabled) of every Inductor compile of a piece, from now on."""
    seen: list[tuple[bool, bool]] = []
    compile_piece = InductorAdapter.compile

    def recording(self: InductorAdapter, gm: object, inputs: object, *, static: bool):
        seen.append((static, torch.is_grad_enabled()))
        return compile_piece(self, gm, inputs, static=static)

    monkeypatch.setattr(InductorAdapter, "compile", recording)
    return seen


@pytest.mark.slow
def test_a_wrong_pass_is_named_with_its_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    torch._dynamo.reset()
    compiles = record_compiles(monkeypatch)
    config = CompilationConfig(
        disable_cache=True,
        max_num_batched_tokens=TWO.max_seqs,
        inductor_passes=[Harmless(), MulToAdd("layers.0.mlp")],
    )
    report = check_model(
        build_llama(TWO), llama_forwards(TWO, [(8, 8)]), config, fullgraph=True
    )
    first = report.first
    assert first is not None and first.name == "submod_2" and first.arose_inside
    assert "MulToAdd (inductor_passes[1]" in first.passes
    assert "Harmless" not in first.passes
    assert not report.pieces[0].beyond
    # The last piece only gets the difference.
    assert report.pieces[2].inputs.beyond and not report.pieces[2].output.beyond
    assert not report.pieces[2].passes
    # The three pieces as served, then the search's three compiles of submod_2
    # (without any pass, without each of the two); all as served: for the
    # general shape, of an inference graph (NOTE: [the search compiles the
    # piece as it was served], passes.py).
    assert compiles == [(False, False)] * 6


@pytest.mark.slow
def test_looser_numerics_are_named() -> None:
    """Matrix products in bfloat16 in one piece: off by about 1e-2, far beyond
    float32's tolerance, where Inductor's own options stay within it on CPU
    (docs/compiling.md, "What the check holds a piece to")."""
    torch._dynamo.reset()
    config = CompilationConfig(
        disable_cache=True,
        max_num_batched_tokens=ONE.max_seqs,
        inductor_passes=[MatmulsInBF16("layers.0.mlp")],
    )
    report = check_model(
        build_llama(ONE), llama_forwards(ONE, [(8, 8)]), config, fullgraph=True
    )
    first = report.first
    assert first is not None and first.name == "submod_2"
    assert 1e-4 < first.output.abs < 1.0
    assert "MatmulsInBF16 (inductor_passes[0]" in first.passes
    assert not report.pieces[0].beyond


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("copy_inputs", [False, True], ids=["moved", "copied"])
def test_a_cuda_graph_replayed_on_moved_inputs_is_named(copy_inputs: bool) -> None:
    """As the emulated test above, with CUDA's graphs: the splitting op's
    outputs are all kept (check_support.KEPT), so each call's input of the
    second piece is at a new address, and its replay reads the captured one."""
    torch._dynamo.reset()
    model = Toy("fresh").to("cuda")
    report = check_model(
        model,
        model.forwards([(8, 1), (3, 2)], device="cuda"),
        graph_config(cudagraph_copy_inputs=copy_inputs),
    )
    first, second = report.pieces
    assert first.replay is not None and not first.replay.beyond
    assert second.replay is not None and second.replay.beyond is not copy_inputs
    assert not second.output.beyond
    assert report.ok is copy_inputs
    if not copy_inputs:
        assert report.first is second
