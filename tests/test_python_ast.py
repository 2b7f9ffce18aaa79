"""Stitch's AST conversions never raise CPython's depth mismatch (NOTE: [an AST
built with the collector held off] in runtime/compat/python_ast.py).

On the releases that share the AST constructor's depth across the interpreter,
a conversion that starts while another is inside the constructor sets that
depth again, and the first raises ``SystemError: AST constructor recursion
depth mismatch``.  Here the second conversion is a finalizer's: objects in
reference cycles that parse when they are collected, with the collector's
threshold low, so that a collection starts inside the constructor of a long
source (CI's run 30 had another thread in its place).
"""

from __future__ import annotations

import ast
import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stitch.runtime.compat import python_ast
from stitch.runtime.store import codec

pytestmark = pytest.mark.skipif(
    not python_ast.SHARED_DEPTH,
    reason="this CPython keeps the AST constructor's depth per conversion",
)

SOURCE = "\n".join(
    f"v{i} = f(a[{i}], b={{'k': [{i}, ({i}, {i})]}})" for i in range(800)
)
LITERAL = repr({f"piece_{i}": {"sizes": [i, (i, i)], "ok": True} for i in range(800)})
ROUNDS = 10


class ParsesWhenCollected:
    """A reference cycle: only the collector frees it, and its finalizer then
    converts a source of its own."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        ast.parse("x = (1, 2)")


@pytest.fixture
def collections_inside() -> Iterator[Callable[[Callable[[], Any]], int]]:
    """Run a conversion ``ROUNDS`` times, each with collectable cycles that
    parse and a collection threshold low enough to start inside it; the
    number of rounds that raised the mismatch."""
    threshold = gc.get_threshold()

    def rounds(convert: Callable[[], Any]) -> int:
        raised = 0
        gc.set_threshold(50)
        try:
            for _ in range(ROUNDS):
                for _ in range(200):
                    ParsesWhenCollected()
                try:
                    convert()
                except SystemError as exc:
                    assert "recursion depth mismatch" in str(exc), exc
                    raised += 1
        finally:
            gc.set_threshold(*threshold)
            gc.collect()
        return raised

    yield rounds


def test_the_race_is_there_for_plain_ast_calls(
    collections_inside: Callable[[Callable[[], Any]], int],
) -> None:
    # The setup reproduces what Stitch's conversions guard against.
    assert collections_inside(lambda: ast.parse(SOURCE)) > 0


def test_stitchs_conversions_never_raise_it(
    collections_inside: Callable[[Callable[[], Any]], int],
) -> None:
    assert collections_inside(lambda: python_ast.parse(SOURCE)) == 0
    assert collections_inside(lambda: python_ast.literal_eval(LITERAL)) == 0
    # The store's reader (the read-back check of run 30's record is the same call).
    assert collections_inside(lambda: codec.parse(LITERAL, "index.py")) == 0


def test_the_collector_is_left_as_it_was() -> None:
    assert gc.isenabled()
    assert python_ast.literal_eval("[1, (2, 3)]") == [1, (2, 3)]
    assert gc.isenabled()
    gc.disable()
    try:
        python_ast.parse("x = 1")
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(SyntaxError):
        python_ast.parse("x = (")
    assert gc.isenabled()
