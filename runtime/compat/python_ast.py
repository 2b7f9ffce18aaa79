"""Stitch's reads of Python text through ``ast`` (``parse`` and
``literal_eval``), each tree built with the garbage collector held off (NOTE:
[an AST built with the collector held off]).

NOTE: [an AST built with the collector held off]
CPython 3.11 before 3.11.8, and 3.12 before 3.12.2, keep the AST
constructor's recursion depth in state that the whole interpreter shares
(CPython gh-106905).  Each conversion sets that depth to three times its
caller's stack depth at its start, and checks it again at its end.  The
constructor runs no Python code of its own, but an allocation inside it can
start a collection, and the finalizers and weakref callbacks that a
collection runs are Python code.  There another thread can take the GIL, or
the finalizer itself can parse; a conversion started meanwhile (3.11 parses
each traceback's caret lines) sets the depth again, and the first conversion
raises ``SystemError: AST constructor recursion depth mismatch`` for a tree
it built correctly.  In CI's run 30 the check of a saved step's record
raised it inside a forward, at a tiered start's last swap ("before=99": its
thread 33 frames deep; docs/performance.md, "Runs 29 and 30"), and
transformers' server stopped serving (NOTE: [what waits for the last swap
never fails a forward] keeps it serving since).  A finalizer that parses,
collected while a 3,000-line source was parsed, raised it in 19 conversions
of 20 on CPython 3.11.7, and in none with the collector held off.

With collection held off until the tree is built, nothing else runs inside
Stitch's conversions, so they never raise it.  A conversion elsewhere that
one of Stitch's interrupts can still raise it: that is CPython's to fix, and
3.11.8 and 3.12.2 did (each conversion counts its own depth there).
Stitch's conversions take one lock, so that two of them never turn the
collector back on under each other.  On the releases without the shared
depth both are ``ast``'s own calls.
"""

from __future__ import annotations

import ast
import gc
import sys
import threading
from typing import Any

# The releases whose AST constructor shares its depth across the interpreter
# (3.10's too, whether or not it took gh-95185's depth: the guard is cheap).
_RELEASE = sys.version_info[:3]
SHARED_DEPTH = _RELEASE < (3, 11, 8) or (3, 12) <= _RELEASE < (3, 12, 2)

_converting = threading.RLock()


def parse(source: str, filename: str = "<unknown>", mode: str = "exec") -> ast.AST:
    """``ast.parse(source, filename, mode)``, safe beside other conversions
    (NOTE: [an AST built with the collector held off])."""
    if not SHARED_DEPTH:
        return ast.parse(source, filename, mode)
    with _converting:
        was_on = gc.isenabled()
        gc.disable()
        try:
            return ast.parse(source, filename, mode)
        finally:
            if was_on:
                gc.enable()


def literal_eval(text: str) -> Any:
    """``ast.literal_eval(text)``: the literal ``text`` holds, never evaluated,
    its tree built as :func:`parse` builds it."""
    return ast.literal_eval(parse(text.lstrip(" \t"), mode="eval"))


__all__ = ["SHARED_DEPTH", "literal_eval", "parse"]
