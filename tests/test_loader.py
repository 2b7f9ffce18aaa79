"""compile_execution_fn: loading emitted source and binding it to its pieces."""

from __future__ import annotations

import hashlib
import inspect
import linecache
import traceback
from typing import Any

import pytest
import torch
from models import emit_case, randn

from stitch.codegen import StitchLoadError
from stitch.runtime import compile_execution_fn, source_filename

SIMPLE = """\
def execution_fn(x, *, __vllm_submods__):
    y = __vllm_submods__[0](x)
    del x
    z = __vllm_submods__[1](y)
    return z
"""


def test_filename_is_content_hashed() -> None:
    digest = hashlib.sha256(SIMPLE.encode()).hexdigest()[:12]
    assert source_filename(SIMPLE) == f"<stitch-execution-fn-{digest}>"
    assert source_filename(SIMPLE) == source_filename(str(SIMPLE))
    assert source_filename(SIMPLE + "\n") != source_filename(SIMPLE)


def test_source_is_registered_in_linecache() -> None:
    emitted = emit_case("splitting_first_and_last")
    fn = compile_execution_fn(
        emitted.code,
        dict(emitted.split_gm.named_children()),
        emitted.submod_names,
        emitted.consts,
    )
    filename = source_filename(emitted.code)
    assert fn.__code__.co_filename == filename
    linecache.checkcache()  # must not evict an entry without a file on disk
    assert "".join(linecache.getlines(filename)) == emitted.code
    assert inspect.getsource(fn) in emitted.code
    assert inspect.getsource(fn).startswith(
        "def execution_fn(x, y, *, __vllm_submods__):"
    )


def _raising_piece(*_args: Any) -> Any:
    raise RuntimeError("boom from a compiled piece")


def _frames_in(exc: BaseException, filename: str) -> list[traceback.FrameSummary]:
    return [
        f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename
    ]


def test_exception_in_a_compiled_piece_shows_the_emitted_line() -> None:
    emitted = emit_case("splitting_first_and_last")
    callables = dict(emitted.split_gm.named_children())
    (compiled,) = emitted.submod_names
    callables[compiled] = _raising_piece
    fn = compile_execution_fn(
        emitted.code, callables, emitted.submod_names, emitted.consts
    )
    with pytest.raises(RuntimeError, match="boom") as info:
        fn(*randn(0, (3, 3), (3, 3)))
    filename = source_filename(emitted.code)
    (frame,) = _frames_in(info.value, filename)
    assert frame.name == "execution_fn"
    assert frame.line == "submod_1 = __vllm_submods__[0](submod_0, y)"
    assert emitted.code.splitlines()[frame.lineno - 1].strip() == frame.line
    rendered = "".join(traceback.format_exception(info.value))
    assert f'File "{filename}", line {frame.lineno}, in execution_fn' in rendered
    assert "submod_1 = __vllm_submods__[0](submod_0, y)" in rendered


def test_exception_in_an_inlined_piece_shows_the_emitted_line() -> None:
    emitted = emit_case("splitting_first_and_last")
    fn = compile_execution_fn(
        emitted.code,
        dict(emitted.split_gm.named_children()),
        emitted.submod_names,
        emitted.consts,
    )
    with pytest.raises(RuntimeError, match="stitchtest::scale") as info:
        fn("not a tensor", torch.zeros(3))  # the op's schema check fails
    frames = _frames_in(info.value, source_filename(emitted.code))
    assert [(f.name, f.line) for f in frames] == [
        ("execution_fn", "submod_0 = __vllm_inlined_submods__0(x)"),
        ("__vllm_inlined_submods__0", "scale = torch.ops.stitchtest.scale(x, 2.0)"),
    ]


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
    emitted = emit_case("device_dtype_consts")
    pieces = dict(emitted.split_gm.named_children())
    with pytest.raises(StitchLoadError, match=r"__vllm_consts__\[5\].*consts=None"):
        compile_execution_fn(emitted.code, pieces, emitted.submod_names, None)
    with pytest.raises(StitchLoadError, match="5 constants were given"):
        compile_execution_fn(
            emitted.code, pieces, emitted.submod_names, emitted.consts[:5]
        )
