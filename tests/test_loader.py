"""compile_execution_fn: loading emitted source and binding it to its pieces."""

from __future__ import annotations

import inspect
import io
import linecache
import logging
import os
import pdb
import stat
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch

from stitch.core.errors import StitchLoadError
from stitch.runtime import compile_execution_fn, source_filename

from models import emit_case, randn

TESTS_DIR = Path(__file__).resolve().parent

SIMPLE = """\
def execution_fn(x, *, __vllm_submods__):
    y = __vllm_submods__[0](x)
    z = __vllm_submods__[1](y)
    return z
"""


def _load(name: str, **overrides: Any) -> tuple[Any, Any]:
    emitted = emit_case(name)
    callables = {**dict(emitted.split_gm.named_children()), **overrides}
    fn = compile_execution_fn(
        emitted.code, callables, emitted.submod_names, emitted.consts
    )
    return emitted, fn


def _three_outputs(*_args: Any) -> Any:
    return (torch.zeros(1), torch.zeros(1), torch.zeros(1))


def _raising_piece(*_args: Any) -> Any:
    raise RuntimeError("boom from a compiled piece")


def _frames_in(exc: BaseException, filename: str) -> list[traceback.FrameSummary]:
    return [
        f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename
    ]


# -- where the source lives ------------------------------------------------------------


def test_source_is_compiled_from_a_private_content_named_file() -> None:
    emitted, fn = _load("splitting_first_and_last")
    path = source_filename(emitted.code)
    assert fn.__code__.co_filename == path
    assert Path(path).read_text(encoding="utf-8") == emitted.code
    mode = os.stat(os.path.dirname(path)).st_mode
    assert stat.S_IMODE(mode) & 0o077 == 0
    # Loading the same source again reuses the file; other source gets its own.
    before = os.stat(path).st_mtime_ns
    _load("splitting_first_and_last")
    assert os.stat(path).st_mtime_ns == before
    assert source_filename(emitted.code + "\n") != path


def test_a_given_filename_is_used(tmp_path: Path) -> None:
    emitted = emit_case("splitting_first_and_last")
    path = tmp_path / "execution_fn.py"
    path.write_text(emitted.code, encoding="utf-8")
    pieces = dict(emitted.split_gm.named_children())
    fn = compile_execution_fn(
        emitted.code, pieces, emitted.submod_names, emitted.consts, filename=str(path)
    )
    assert fn.__code__.co_filename == str(path)
    path.write_text(emitted.code + "# edited\n", encoding="utf-8")
    with pytest.raises(StitchLoadError, match="does not hold exactly the source"):
        compile_execution_fn(
            emitted.code,
            pieces,
            emitted.submod_names,
            emitted.consts,
            filename=str(path),
        )


def test_a_directory_that_is_not_private_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    emitted = emit_case("splitting_first_and_last")
    shared = Path(source_filename(emitted.code)).parent
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="stitch"):
        _, fn = _load("splitting_first_and_last")
    assert fn.__code__.co_filename.startswith("<stitch-execution-fn-")
    assert not list(shared.iterdir())
    assert "not private to this user" in caplog.text
    # The lines are still there for pdb, inspect and traceback.format_*.
    assert inspect.getsource(fn) in emitted.code


def test_source_is_registered_in_linecache() -> None:
    emitted, fn = _load("getitem_tuple_outputs")
    filename = fn.__code__.co_filename
    linecache.checkcache()  # must not evict the entry
    assert "".join(linecache.getlines(filename)) == emitted.code
    assert inspect.getsource(fn) in emitted.code
    assert inspect.getsource(fn).startswith(
        "def execution_fn(x, y, *, __vllm_submods__):"
    )


# -- tracebacks and debuggers show the emitted lines ------------------------------------


def test_exception_in_a_compiled_piece_shows_the_emitted_line() -> None:
    emitted = emit_case("splitting_first_and_last")
    (compiled,) = emitted.submod_names
    _, fn = _load("splitting_first_and_last", **{compiled: _raising_piece})
    with pytest.raises(RuntimeError, match="boom") as info:
        fn(*randn(0, (3, 3), (3, 3)))
    (frame,) = _frames_in(info.value, fn.__code__.co_filename)
    assert frame.name == "execution_fn"
    assert frame.line == "add = submod_1(scale, y)"
    assert emitted.code.splitlines()[frame.lineno - 1].strip() == frame.line


def test_exception_in_an_inlined_piece_shows_both_frames() -> None:
    _, fn = _load("getitem_tuple_outputs")
    with pytest.raises(RuntimeError, match="stitchtest::pair") as info:
        fn("not a tensor", torch.zeros(3))  # the op's schema check fails
    frames = _frames_in(info.value, fn.__code__.co_filename)
    assert [(f.name, f.line) for f in frames] == [
        ("execution_fn", "getitem, getitem_1 = __vllm_inlined_submods__0(x)"),
        ("__vllm_inlined_submods__0", "pair = stitchtest_pair(x)"),
    ]


_EXCEPTHOOK_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch
from models import emit_case
from stitch.runtime import compile_execution_fn

emitted = emit_case("getitem_tuple_outputs")
pieces = dict(emitted.split_gm.named_children())
# The first compiled piece returns three values where the source unpacks two:
# execution_fn itself raises.
pieces[emitted.submod_names[0]] = lambda *a: (torch.zeros(1),) * 3
fn = compile_execution_fn(emitted.code, pieces, emitted.submod_names, emitted.consts)
print(fn.__code__.co_filename, flush=True)
fn(torch.zeros(3), torch.zeros(3))
"""


@pytest.mark.slow
def test_the_default_excepthook_prints_the_emitted_line() -> None:
    """Python's own hook reads source from disk (3.11), not from linecache."""
    result = subprocess.run(
        [sys.executable, "-c", _EXCEPTHOOK_SCRIPT.format(tests=str(TESTS_DIR))],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    filename = result.stdout.strip()
    assert "ValueError: too many values to unpack" in result.stderr
    assert f'File "{filename}", line ' in result.stderr
    assert "getitem, getitem_3 = submod_1(getitem, y)" in result.stderr


def test_pdb_lists_the_emitted_source() -> None:
    emitted = emit_case("getitem_tuple_outputs")
    _, fn = _load("getitem_tuple_outputs", **{emitted.submod_names[0]: _three_outputs})
    with pytest.raises(ValueError, match="too many values") as info:
        fn(torch.zeros(3), torch.zeros(3))
    out = io.StringIO()
    debugger = pdb.Pdb(stdin=io.StringIO("where\nlist\nquit\n"), stdout=out)
    debugger.use_rawinput = False
    debugger.reset()
    debugger.interaction(None, info.value.__traceback__)
    listing = out.getvalue()
    assert "-> getitem, getitem_3 = submod_1(getitem, y)" in listing
    assert "def execution_fn(x, y, *, __vllm_submods__):" in listing


# -- binding ----------------------------------------------------------------------------


class _Piece(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + 1


def test_modules_are_bound_through_forward() -> None:
    first, second = _Piece(), _Piece()
    hooked: list[str] = []
    first.register_forward_pre_hook(lambda *_: hooked.append("pre"))
    second.register_forward_hook(lambda *_: hooked.append("post"))
    fn = compile_execution_fn(SIMPLE, {"a": first, "b": second}, ["a", "b"])
    submods = fn.__kwdefaults__["__vllm_submods__"]
    assert submods == [first.forward, second.forward]
    torch.testing.assert_close(fn(torch.zeros(2)), torch.full((2,), 2.0))
    assert (first.calls, second.calls) == (1, 1)
    assert hooked == []  # nn.Module.__call__ (and its hooks) is skipped


def test_plain_callables_are_bound_as_they_are() -> None:
    def add_one(x: Any) -> Any:
        return x + 1

    fn = compile_execution_fn(
        SIMPLE, {"a": add_one, "b": add_one, "unused": 0}, ["a", "b"]
    )
    assert fn.__kwdefaults__["__vllm_submods__"] == [add_one, add_one]
    assert fn(1) == 3


def test_each_compiled_function_has_its_own_pieces() -> None:
    f1 = compile_execution_fn(
        SIMPLE, {"a": lambda x: x + 1, "b": lambda x: x * 10}, ["a", "b"]
    )
    f2 = compile_execution_fn(
        SIMPLE, {"a": lambda x: x - 1, "b": lambda x: x * 100}, ["a", "b"]
    )
    assert (f1(1), f2(1), f1(2)) == (20, 0, 30)


def test_a_piece_without_a_callable_is_named() -> None:
    with pytest.raises(StitchLoadError, match="'b'") as info:
        compile_execution_fn(SIMPLE, {"a": abs}, ["a", "b"])
    assert "submod_names" in str(info.value)


@pytest.mark.parametrize(
    ("code", "match"),
    [
        ("def other(x):\n    return x\n", "does not define a function 'execution_fn'"),
        ("execution_fn = 3\n", "does not define a function 'execution_fn'"),
        (
            "def execution_fn(x):\n    return x\n",
            "no keyword-only parameter __vllm_submods__",
        ),
        ("def execution_fn(x:\n", "does not compile"),
    ],
    ids=["missing", "not-a-function", "no-submods-parameter", "syntax-error"],
)
def test_unusable_source_is_a_load_error(code: str, match: str) -> None:
    with pytest.raises(StitchLoadError, match=match) as info:
        compile_execution_fn(code, {}, [])
    assert source_filename(code) in str(info.value)


def test_consts_none_loads_source_that_reads_no_constants() -> None:
    emitted = emit_case("no_splitting_op")
    assert emitted.consts == []
    fn = compile_execution_fn(
        emitted.code,
        dict(emitted.split_gm.named_children()),
        emitted.submod_names,
        None,
    )
    (x,) = randn(0, (5, 6))
    with torch.no_grad():
        torch.testing.assert_close(fn(x), emitted.split_gm(x))


def test_missing_constants_are_a_load_error() -> None:
    emitted = emit_case("two_layer_attention")
    pieces = dict(emitted.split_gm.named_children())
    last = len(emitted.consts) - 1
    with pytest.raises(
        StitchLoadError, match=rf"__vllm_consts__\[{last}\].*consts=None"
    ):
        compile_execution_fn(emitted.code, pieces, emitted.submod_names, None)
    with pytest.raises(StitchLoadError, match=f"{last} constants were given"):
        compile_execution_fn(
            emitted.code, pieces, emitted.submod_names, emitted.consts[:last]
        )
