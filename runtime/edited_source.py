"""A stitching file the user edited, run in place of the emitted source once its
contract is checked (``CompilationConfig(stitching_source=PATH)``).

NOTE: [an edited stitching file runs in place of the emitted one]
The emitted source is a file a person reads; it is also one they may change
and run: a print, an assert, an NVTX range or a timer, a ``del`` moved, a
piece called eagerly to bisect a bug, a stitching bug patched before a
release.  Everything else stays as a compile does it: the same pieces,
compiled, cached and warm-started as usual, and the cache keeps the emitted
source (``execution_fn.py`` is never overwritten by the edit; a later run
without ``stitching_source`` starts warm on it).  Where the edited file runs
is the one place every start binds source to pieces (``materialize``), so a
cold compile, a warm start, a tiered start and a saved forward all run it.

Before its first forward, the file is checked against what the loader will
bind it to, the emitted source of the same graph: it parses; it defines
``execution_fn`` with the emitted parameter list (the function is called by
position, so a parameter added, dropped or moved would bind the wrong
tensors); it unpacks the same pieces in the same order (item ``i`` of
``__vllm_submods__`` is piece ``i``); every constant slot it reads exists.
Each failure names the file, the line, and what the emitted source has there.
Its errors are the user's, not the cache's: they never make a warm load
compile again, and nothing is written because of them.  An entry written
while an edited file ran records the file and its sha256 in its index
(``stitch inspect`` prints them, for a saved forward of that entry too); an
entry read warm is never rewritten for an edit, since a saved forward
refuses an entry whose index changed after it was saved.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import os
import traceback
from collections.abc import Iterator

from stitch.core.contract import CONSTS_NAME, DISPATCH_NAME, FUNCTION_NAME, SUBMODS_NAME
from stitch.core.errors import StitchLoadError, describe_exception

from .compat import python_ast

__all__ = ["EditedSource", "edited_step", "read_edited_source"]


@dataclasses.dataclass(frozen=True)
class EditedSource:
    """An edited stitching file, read once: its path, its text and its sha256."""

    path: str
    code: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What the contract compares of one source: the function, its parameters
    and the statement that unpacks the pieces (None: none found)."""

    fn: ast.FunctionDef
    params: tuple[str, ...]
    kwonly: tuple[str, ...]
    unpack: ast.Assign | None
    pieces: tuple[str, ...]


def read_edited_source(
    path: str, emitted: str, submod_names: tuple[str, ...], n_consts: int
) -> EditedSource:
    """The file at ``path``, checked against the ``emitted`` source it stands in
    for (NOTE: [an edited stitching file runs in place of the emitted one])."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        with open(path, "rb") as f:
            data = f.read()
        code = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StitchLoadError(
            f"stitching_source {path} cannot be read: {type(exc).__name__}: {exc}"
        ) from exc
    edited = EditedSource(path, code, hashlib.sha256(data).hexdigest())
    check_contract(edited, emitted, submod_names, n_consts)
    return edited


def check_contract(
    edited: EditedSource, emitted: str, submod_names: tuple[str, ...], n_consts: int
) -> None:
    """Raise :class:`StitchLoadError` naming the file and line where ``edited``
    breaks the contract ``emitted`` keeps."""
    lines = emitted.splitlines()
    try:
        tree = python_ast.parse(edited.code, filename=edited.path)
    except SyntaxError as exc:
        at = exc.lineno or 0
        there = lines[at - 1].strip() if 0 < at <= len(lines) else "(no such line)"
        raise StitchLoadError(
            f"{edited.path}:{at}: syntax error: {exc.msg}; the emitted source "
            f"has there: {there!r}"
        ) from None
    want = _shape(python_ast.parse(emitted), "the emitted source")
    got = _shape(tree, edited.path, want)
    _check_params(edited.path, got, want, lines)
    _check_pieces(edited.path, got, want, lines, submod_names)
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == CONSTS_NAME
        ):
            continue
        index = node.slice
        if isinstance(index, ast.Constant) and type(index.value) is int:
            if not 0 <= index.value < n_consts:
                raise StitchLoadError(
                    f"{edited.path}:{node.lineno}: reads {CONSTS_NAME}"
                    f"[{index.value}], but the emitted source has {n_consts} "
                    f"constant slot(s)"
                    + (f" (0 to {n_consts - 1})" if n_consts else "")
                )


def _shape(tree: ast.Module, label: str, want: _Shape | None = None) -> _Shape:
    fns = [
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name == FUNCTION_NAME
    ]
    if not fns:
        where = (
            f" (the emitted source defines it at line {want.fn.lineno})" if want else ""
        )
        raise StitchLoadError(f"{label}: defines no function {FUNCTION_NAME!r}{where}")
    fn = fns[-1]
    args = fn.args
    params = tuple(a.arg for a in (*args.posonlyargs, *args.args))
    if args.vararg is not None:
        params += ("*" + args.vararg.arg,)
    unpack = next((s for s in ast.walk(fn) if _unpacks_pieces(s)), None)
    pieces: tuple[str, ...] = ()
    if unpack is not None:
        target = unpack.targets[0]
        elts = target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
        pieces = tuple(
            e.id if isinstance(e, ast.Name) else ast.unparse(e) for e in elts
        )
    return _Shape(fn, params, tuple(a.arg for a in args.kwonlyargs), unpack, pieces)


def _unpacks_pieces(node: ast.AST) -> bool:
    """``a, b = __vllm_submods__`` or ``a, b = __vllm_dispatch__[size]``."""
    if not isinstance(node, ast.Assign) or len(node.targets) != 1:
        return False
    value = node.value
    if isinstance(value, ast.Subscript):
        value = value.value
        return isinstance(value, ast.Name) and value.id == DISPATCH_NAME
    return isinstance(value, ast.Name) and value.id == SUBMODS_NAME


def _emitted_line(lines: list[str], node: ast.AST) -> str:
    return lines[node.lineno - 1].strip()  # type: ignore[attr-defined]


def _check_params(path: str, got: _Shape, want: _Shape, lines: list[str]) -> None:
    if got.params == want.params and got.kwonly == want.kwonly:
        return
    if got.kwonly != want.kwonly:
        what = (
            f"keyword-only parameters ({', '.join(got.kwonly) or 'none'}) differ from "
            f"the emitted source's ({', '.join(want.kwonly)})"
        )
    elif len(got.params) != len(want.params):
        what = (
            f"{FUNCTION_NAME} takes {len(got.params)} parameter(s); the emitted "
            f"source's takes {len(want.params)} (called by position)"
        )
    else:
        i = next(
            i
            for i, (a, b) in enumerate(zip(got.params, want.params, strict=True))
            if a != b
        )
        what = (
            f"parameter {i + 1} is {got.params[i]!r}; the emitted source has "
            f"{want.params[i]!r} there (called by position)"
        )
    raise StitchLoadError(
        f"{path}:{got.fn.lineno}: {what}; the emitted source's line "
        f"{want.fn.lineno}: {_emitted_line(lines, want.fn)!r}"
    )


def _check_pieces(
    path: str,
    got: _Shape,
    want: _Shape,
    lines: list[str],
    submod_names: tuple[str, ...],
) -> None:
    if want.unpack is None or got.pieces == want.pieces:
        return
    emitted = f"the emitted source's line {want.unpack.lineno}: " + repr(
        _emitted_line(lines, want.unpack)
    )
    if got.unpack is None:
        raise StitchLoadError(
            f"{path}:{got.fn.lineno}: {FUNCTION_NAME} never unpacks its compiled "
            f"pieces ({', '.join(submod_names)}); {emitted}"
        )
    missing = [p for p in want.pieces if p not in got.pieces]
    extra = [p for p in got.pieces if p not in want.pieces]
    if missing or extra:
        what = "; ".join(
            part
            for part in (
                f"missing piece(s) {', '.join(missing)}" if missing else "",
                f"piece(s) the compile has not: {', '.join(extra)}" if extra else "",
            )
            if part
        )
    else:
        what = f"the pieces are unpacked in another order ({', '.join(got.pieces)})"
    raise StitchLoadError(f"{path}:{got.unpack.lineno}: {what}; {emitted}")


@contextlib.contextmanager
def edited_step(edited: EditedSource) -> Iterator[None]:
    """Loading ``edited`` (its top level run, its function bound): a failure
    names the file and the line it reached there."""
    try:
        yield
    except Exception as exc:
        frames = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if f.filename == edited.path
        ]
        at = f":{frames[-1].lineno}" if frames else ""
        raise StitchLoadError(
            f"{edited.path}{at}: the edited stitching source fails to load: "
            f"{describe_exception(exc)}"
        ) from exc
