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

import re
import string

import black
from black.strings import str_width

LINE_LENGTH = 88
BLACK_MODE = black.Mode(
    target_versions={black.TargetVersion.PY310},
    line_length=LINE_LENGTH,
)

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
_NAME_OR_STAR = r"(?:[A-Za-z_][A-Za-z0-9_]*|\*)"
_PLAIN_DEF = re.compile(
    rf"def ([A-Za-z_][A-Za-z0-9_]*)\(({_NAME_OR_STAR}(?:, {_NAME_OR_STAR})*)\):"
)
_KEYWORDS = frozenset({"def", "del", "return"})
_UNKNOWN = object()
# Marks a deferred statement in rendered source (never in Python source).
_MARK = "\x00"
_MARKED = re.compile(f"{_MARK}(\\d+){_MARK}")


class Layout:
    """Lays out statements as black does, remembering each shape's layout.

    With ``deferred=True`` a statement whose shape is new comes back as a
    marker, and :meth:`resolve` lays out every such statement of a rendered
    module with one black run (NOTE: [one black run per module]).
    """

    def __init__(self, *, deferred: bool = False) -> None:
        # Statement shape -> black's layout of it as a format string over the
        # statement's tokens, or None where black must run for each statement.
        self._splits: dict[tuple[object, ...], str | None] = {}
        self._deferred = deferred
        self._pending: list[tuple[tuple[object, ...], str, int]] = []

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
            if self._deferred:
                self._pending.append((key, text, depth))
                return f"{_MARK}{len(self._pending) - 1}{_MARK}"
            laid_out = _with_black(text, depth)
            self._splits[key] = _template(text, laid_out)
            return laid_out
        if split is None:
            return _with_black(text, depth)
        return split.format(*_VALUES.findall(text))

    def resolve(self, source: str) -> str:
        """``source`` with every marker replaced by its statement's layout.

        NOTE: [one black run per module]
        black's fixed cost per call (about 2 ms) is most of what laying out a
        statement costs, and a model has a handful of new shapes per module:
        one statement of each new shape goes to black, all in one module, and
        each shape's layout fills the others.
        """
        if not self._pending:
            return source
        firsts: dict[tuple[object, ...], tuple[str, int]] = {}
        for key, text, depth in self._pending:
            firsts.setdefault(key, (text, depth))
        laid_out = dict(
            zip(firsts, _with_black_many(list(firsts.values())), strict=True)
        )
        for key, (text, _) in firsts.items():
            self._splits[key] = _template(text, laid_out[key])
        # The statement black laid out keeps that layout (its shape may have no
        # format string, and black need not run for it twice).
        results = [
            laid_out[key] if firsts[key] == (text, depth) else self(text, depth)
            for key, text, depth in self._pending
        ]
        self._pending.clear()
        return _MARKED.sub(lambda m: results[int(m[1])], source)


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
    """black's split of ``a, b = f(x, y[0], k=1)`` (plain arguments), or None.

    What right_hand_split makes of it when ``a, b = f(`` fits: the optional
    parentheses around the value are dropped (the targets hold no brackets, or
    the line up to ``f(`` fits), the arguments go on a line of their own, or if
    they do not fit there, one per line with a trailing comma.  Anything else
    (a head that does not fit, an argument that does not fit on its own line)
    is left to the general split.
    """
    m = _PLAIN_CALL.fullmatch(text)
    if m is None:
        return None
    targets, callee, args = m.groups()
    head = f"{targets} = {callee}(" if targets else f"{callee}("
    indent = "    " * (depth + 1)
    if len(indent) - 4 + len(head) > LINE_LENGTH:
        return None
    if len(indent) + len(args) <= LINE_LENGTH:
        body = [indent + args]
    else:
        body = [f"{indent}{arg}," for arg in args.split(", ")]
        if max(len(line) for line in body) > LINE_LENGTH:
            return None
    return "\n".join([head, *body, "    " * depth + ")"])


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


def _with_black_many(statements: list[tuple[str, int]]) -> list[str]:
    """black's own layout of each statement, as it formats it inside a module
    (one black run over all of them, each nested ``depth`` functions deep)."""
    snippets = []
    for i, (text, depth) in enumerate(statements):
        nesting = "".join(f"{'    ' * d}def _():\n" for d in range(depth))
        body = f"{'    ' * (depth + 1)}pass\n" if text.endswith(":") else ""
        snippets.append(f"{_SEPARATOR}{i} = 0\n{nesting}{'    ' * depth}{text}\n{body}")
    formatted = black.format_str("".join(snippets), mode=BLACK_MODE)
    parts = re.split(rf"^{_SEPARATOR}\d+ = 0\n", formatted, flags=re.MULTILINE)[1:]
    results = []
    for (text, depth), part in zip(statements, parts, strict=True):
        lines = [line for line in part.splitlines() if line]
        body = text.endswith(":")
        results.append("\n".join(lines[depth : len(lines) - body])[4 * depth :])
    return results


_SEPARATOR = "___stitch_statement_"


def _with_black(text: str, depth: int) -> str:
    return _with_black_many([(text, depth)])[0]
