"""Where each piece is called in the emitted stitching source: its lines."""

from __future__ import annotations

import ast
from collections.abc import Sequence

from stitch.core.contract import DISPATCH_NAME, SUBMODS_NAME

from ..compat import python_ast


def piece_lines(code: str, submod_names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Piece name -> (first, last) line of its call in ``code``, the comment
    naming its modules included.

    The source binds ``__vllm_submods__`` (or the row of ``__vllm_dispatch__``)
    to one local per piece, in ``submod_names`` order; a piece's call is the
    statement that calls that local.
    """
    tree = python_ast.parse(code)
    local_of: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _binds_pieces(node.value):
            target = node.targets[0]
            names = target.elts if isinstance(target, ast.Tuple) else [target]
            for piece, local in zip(submod_names, names, strict=False):
                if isinstance(local, ast.Name):
                    local_of[local.id] = piece
    lines = code.splitlines()
    found: dict[str, tuple[int, int]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Assign, ast.Expr)):
            continue
        call = node.value
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
            continue
        piece = local_of.get(call.func.id)
        if piece is None or piece in found:
            continue
        first = node.lineno
        if first >= 2 and lines[first - 2].lstrip().startswith("#"):
            first -= 1
        found[piece] = (first, node.end_lineno or node.lineno)
    return found


def _binds_pieces(value: ast.expr) -> bool:
    if isinstance(value, ast.Name):
        return value.id == SUBMODS_NAME
    return (
        isinstance(value, ast.Subscript)
        and isinstance(value.value, ast.Name)
        and value.value.id == DISPATCH_NAME
    )
