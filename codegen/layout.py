"""Statements laid out as black lays them out, black running once per shape.

A :class:`Layout` takes one statement written on one line in black's spacing
(the form :mod:`.emit` writes) and returns what ``black.format_str`` makes of it
at a given depth: the line itself when it fits; a plain call or def line split
the way black splits them (:func:`_plain_call`, :func:`_plain_def`, no black);
else black's own layout of it.  Long statements of a model repeat a handful of
shapes (the same tokens, names of the same lengths), so black runs once per
shape and its layout is kept as a format string over the statement's tokens,
filled with the next statement's (NOTE: [a statement's shape]).
"""

from __future__ import annotations

import functools
import re
import string
from typing import Any

LINE_LENGTH = 88


# NOTE: [black is imported where it runs]
# Importing black costs a cold start's backend call about 0.13 s; most
# statements of a model are laid out without it (their shapes are plain), so
# black is imported where a statement needs its own layout, or where a string
# or a wide character needs its rules (NOTE: [black is imported only to
# generate code] in values.py).
@functools.cache
def black_mode() -> Any:
    """The black mode Stitch formats with (black imported on first use)."""
    import black

    return black.Mode(
        target_versions={black.TargetVersion.PY310}, line_length=LINE_LENGTH
    )


def str_width(text: str) -> int:
    """The width black gives ``text`` (its characters, wide ones counting two)."""
    if text.isascii():
        return len(text)
    from black.strings import str_width as black_width

    return int(black_width(text))


_LITERAL_OR_NAME = (
    r"""b?"(?:[^"\\\n]|\\.)*"|b?'(?:[^'\\\n]|\\.)*'"""  # str and bytes literals
    r"|\d+(?:\.\d+)?(?:e-?\d+)?(?![\w.])"  # numbers as Stitch writes them
    r"|[A-Za-z_][A-Za-z0-9_]*"  # names
)
# Tokens and the spaces between them; any other character is an operator.
_TOKEN = re.compile(_LITERAL_OR_NAME + r"|[ ]+|\n|.")
_LITERAL = re.compile(_LITERAL_OR_NAME)
# The tokens alone, in the same order.
_VALUES = re.compile(rf"[ ]*({_LITERAL_OR_NAME}|.)")
# A statement's shape: letters and digits stand for their class, which keeps
# every token's kind, length and position (see Layout.__call__).
_SHAPE = str.maketrans(
    dict.fromkeys(string.ascii_letters, "a") | dict.fromkeys(string.digits, "0")
)
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# An argument with no brackets of its own but an index: a name, a number, a
# constant slot, maybe as a keyword argument.
_ARG = rf"(?:{_NAME}=)?(?:{_NAME}(?:\[\d+\])?|-?\d+(?:\.\d+)?(?:e-?\d+)?)"
_PLAIN_CALL = re.compile(
    rf"(?:({_NAME}(?:, {_NAME})*) = )?"  # targets
    rf"({_NAME}(?:\.{_NAME})*(?:\[\d+\])?)"  # callee
    rf"\(({_ARG}(?:, {_ARG})+)\)"  # two or more plain arguments
)
# Several names unpacking a name or a table entry (the compiled pieces, bound
# once per forward: NOTE: [pieces are locals] in execution.py).
_PLAIN_UNPACK = re.compile(rf"({_NAME}(?:, {_NAME})+) = ({_NAME}(?:\[{_NAME}\])?)")
_NAME_OR_STAR = r"(?:[A-Za-z_][A-Za-z0-9_]*|\*)"
_PLAIN_DEF = re.compile(
    rf"def ([A-Za-z_][A-Za-z0-9_]*)\(({_NAME_OR_STAR}(?:, {_NAME_OR_STAR})*)\):"
)
_KEYWORDS = frozenset({"def", "del", "return"})
_UNKNOWN = object()


class Layout:
    """Lays out statements as black does, remembering each shape's layout."""

    def __init__(self) -> None:
        # Statement shape -> black's layout of it as a format string over the
        # statement's tokens, or None where black must run for each statement.
        self._splits: dict[tuple[object, ...], str | None] = {}

    def __call__(self, text: str, depth: int) -> str:
        """``text`` (one statement on one line) as black writes it at ``depth``.

        The first line comes without indentation (the template indents it), the
        others with theirs; there is no trailing newline.
        """
        if str_width(text) + 4 * depth <= LINE_LENGTH:
            return text
        laid_out = (
            _plain_def(text, depth)
            if text.startswith("def ")
            else _plain_call(text, depth)
        )
        if laid_out is not None:
            return laid_out
        # NOTE: [a statement's shape]
        # black's decisions depend on the tokens' kinds and widths, not on their
        # text, except for the keyword starting a statement.  Mapping letters to
        # "a" and digits to "0" keeps both: in the valid statements the codegen
        # writes, a run of "a"/"0"/"_" starting with a letter or "_" is a name,
        # one starting with a digit a number, and quotes and backslashes (kept)
        # delimit the literals.  Non-ASCII text is kept as it is.
        first = text.split(" ", 1)[0]
        key = (depth, first if first in _KEYWORDS else "", text.translate(_SHAPE))
        split = self._splits.get(key, _UNKNOWN)
        if split is _UNKNOWN:
            laid_out = _with_black(text, depth)
            self._splits[key] = _template(text, laid_out)
            return laid_out
        if split is None:
            return _with_black(text, depth)
        return split.format(*_VALUES.findall(text))


def _template(text: str, laid_out: str) -> str | None:
    """``laid_out`` as a format string over ``text``'s tokens, or None.

    black changes whitespace and adds brackets and commas; each token of the
    statement is found again, in order, and becomes its placeholder.  A name,
    number or string black rewrote (a quote normalized, say) has no
    placeholder to become: then None, and black runs for every statement of the
    shape.
    """
    values = _VALUES.findall(text)
    parts = []
    index = 0
    for token in _TOKEN.findall(laid_out):
        if index < len(values) and token == values[index]:
            parts.append(f"{{{index}}}")
            index += 1
        elif _LITERAL.fullmatch(token):
            return None
        else:
            parts.append(token.replace("{", "{{").replace("}", "}}"))
    return "".join(parts) if index == len(values) else None


def _plain_call(text: str, depth: int) -> str | None:
    """black's split of ``a, b = f(x, y[0], k=1)`` (plain arguments) or of
    ``a, b = table[n]``, or None.

    What right_hand_split makes of it when ``a, b = f(`` fits: the optional
    parentheses around the value are dropped (the targets hold no brackets, or
    the line up to ``f(`` fits), the arguments go on a line of their own, or if
    they do not fit there, one per line with a trailing comma.  When it does not
    fit, several targets are split as :func:`_split_targets` says.  Anything
    else (one long target, a subscripted callee) is left to the general split.
    An argument too long for a line of its own stays so, as black leaves it.
    """
    m = _PLAIN_CALL.fullmatch(text)
    if m is None:
        unpack = _PLAIN_UNPACK.fullmatch(text)
        if unpack is None:
            return None
        targets, value = unpack.groups()
        table, bracket, key = value.partition("[")
        if bracket and 4 * depth + len(f"{targets} = {table}[") <= LINE_LENGTH:
            # The subscript splits as a call would: ``a, b = table[`` fits.
            return f"{targets} = {table}[\n{'    ' * (depth + 1)}{key[:-1]}\n{'    ' * depth}]"
        return _split_targets(targets, value, depth)
    targets, callee, args = m.groups()
    laid_out = _call_lines(
        f"{targets} = {callee}(" if targets else f"{callee}(", args, depth
    )
    # A subscripted callee (``table[0](``) may split at its subscript: black's.
    if laid_out is None and targets and ", " in targets and "[" not in callee:
        return _split_targets(targets, f"{callee}({args})", depth, callee, args)
    return laid_out


def _call_lines(head: str, args: str, depth: int) -> str | None:
    """``head`` (ending in the call's bracket), its arguments and the closing
    bracket, split as black splits a call; None where ``head`` does not fit."""
    indent = "    " * (depth + 1)
    if len(indent) - 4 + len(head) > LINE_LENGTH:
        return None
    if len(indent) + len(args) <= LINE_LENGTH:
        body = [indent + args]
    else:
        body = [f"{indent}{arg}," for arg in args.split(", ")]
    return "\n".join([head, *body, "    " * depth + ")"])


def _split_targets(
    targets: str, value: str, depth: int, callee: str = "", args: str = ""
) -> str | None:
    """black's split of ``a, b = value`` (a call of ``callee`` with ``args``, or a
    name) where ``a, b = callee(`` does not fit.

    If ``a, b = (`` fits, the value goes in parentheses of its own, on one line
    or split as a call one level deeper.  Else the targets are split, one per
    line with a trailing comma, and the value follows the closing bracket, split
    as a call if it must be.
    """
    outer, indent = "    " * depth, "    " * (depth + 1)
    if len(indent) + len(targets) <= LINE_LENGTH:  # as wide as ``a, b = (``
        inner: str | None = value
        if len(indent) + len(value) > LINE_LENGTH:
            inner = _call_lines(f"{callee}(", args, depth + 1) if callee else None
        return None if inner is None else f"{targets} = (\n{indent}{inner}\n{outer})"
    lines = [f"{indent}{target}," for target in targets.split(", ")]
    tail: str | None = f") = {value}"
    if len(outer) + len(f") = {value}") > LINE_LENGTH:
        tail = _call_lines(f") = {callee}(", args, depth) if callee else None
    return None if tail is None else "\n".join(["(", *lines, outer + tail])


def _plain_def(text: str, depth: int) -> str | None:
    """black's split of ``def name(a, b, *, c):`` (parameters are plain names).

    What left_hand_split and delimiter_split do with it: the parameters on a
    line of their own, or if they do not fit there, one per line with a
    trailing comma (a lone parameter gets one too); a parameter that is still
    too long has nothing left to split.  One def line per function, each with
    its own shape, so this spares the general split the longest statements.
    """
    m = _PLAIN_DEF.fullmatch(text)
    if m is None:
        return None
    params = m[2].split(", ")
    indent = "    " * (depth + 1)
    one_line = ", ".join(params) + ("," if len(params) == 1 else "")
    if len(indent) + len(one_line) <= LINE_LENGTH:
        body = [indent + one_line]
    else:
        body = [f"{indent}{param}," for param in params]
    return "\n".join([f"def {m[1]}(", *body, "    " * depth + "):"])


def _with_black(text: str, depth: int) -> str:
    """black's own layout of the statement, as it formats it inside a module,
    nested ``depth`` functions deep."""
    nesting = "".join(f"{'    ' * d}def _():\n" for d in range(depth))
    body = f"{'    ' * (depth + 1)}pass\n" if text.endswith(":") else ""
    import black

    formatted = black.format_str(
        f"{nesting}{'    ' * depth}{text}\n{body}", mode=black_mode()
    )
    lines = [line for line in formatted.splitlines() if line]
    return "\n".join(lines[depth : len(lines) - bool(body)])[4 * depth :]
