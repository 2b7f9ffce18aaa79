"""Statements laid out as black lays them out, without running black.

A :class:`Layout` takes one statement written on one line in black's spacing
(the form :mod:`.emit` writes) and returns what ``black.format_str`` makes of it
at a given depth: the line itself when it fits, else black's split of it, done
by :mod:`.linesplit`.  Long statements of a model repeat a handful of shapes
(the same tokens, names of the same lengths), so each shape is split once per
``Layout`` and its split reused with the other statements' tokens.  A statement
outside the Python :mod:`.linesplit` knows is formatted by black itself.
"""

from __future__ import annotations

import re
import string

import black
from black.strings import str_width

from .lines import (
    ARGLIST,
    ATOM,
    CLOSING,
    COLON,
    COMMA,
    DOT,
    EQUAL,
    LBRACE,
    LINE_LENGTH,
    LPAR,
    LSQB,
    MATCHING,
    MINUS,
    NAME,
    NUMBER,
    OPENING,
    PARAMETERS,
    RBRACE,
    RPAR,
    RSQB,
    STAR,
    STRING,
    TRAILER,
    Leaf,
    Line,
)
from .linesplit import transform_line

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
_TOKEN = re.compile(_LITERAL_OR_NAME + r"|[ ]+|.")
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
_OPS = {
    ",": COMMA,
    ".": DOT,
    "=": EQUAL,
    ":": COLON,
    "-": MINUS,
    "*": STAR,
    "(": LPAR,
    ")": RPAR,
    "[": LSQB,
    "]": RSQB,
    "{": LBRACE,
    "}": RBRACE,
}
_KEYWORDS = frozenset({"def", "del", "return"})
# Names that would make black consult grammar this port leaves out.
_UNSUPPORTED_NAMES = frozenset(
    {
        "and",
        "async",
        "await",
        "else",
        "for",
        "if",
        "in",
        "is",
        "lambda",
        "not",
        "or",
        "yield",
    }
)
_NO_SPACE_BEFORE = frozenset({COMMA, COLON, RPAR, RSQB, RBRACE})


_UNKNOWN = object()


class _Unsupported(Exception):
    """The statement uses Python :mod:`.linesplit` does not lay out."""


class Layout:
    """Lays out statements as black does, remembering each shape's split."""

    def __init__(self) -> None:
        # Statement shape -> its split as a format string over the statement's
        # tokens, or None where black must do it.
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
            try:
                split = _split(_tokens(text), depth)
            except _Unsupported:
                split = None
            self._splits[key] = split
        if split is None:
            return _with_black(text, depth)
        return split.format(*_VALUES.findall(text))


def lay_out(text: str, depth: int) -> str:
    """One statement laid out as black lays it out (see :class:`Layout`)."""
    return Layout()(text, depth)


def _split(tokens: list[tuple[int, str]], depth: int) -> str:
    """black's split of the statement, as a format string over its tokens."""
    line = Line(depth)
    for leaf in _leaves(tokens):
        line.append(leaf)
    parts = []
    for split in transform_line(line):
        first = split.leaves[0]
        parts.append("\n" + first.prefix + "    " * split.depth)
        for leaf in split.leaves:
            if leaf is not first:
                parts.append(leaf.prefix)
            parts.append(
                f"{{{leaf.source}}}"
                if leaf.source >= 0
                else leaf.value.replace("{", "{{").replace("}", "}}")
            )
    # The first line comes unindented: the template indents it.
    return "".join(parts)[1 + 4 * depth :]


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


def _with_black(text: str, depth: int) -> str:
    """black's own layout of one statement, as it formats it inside a module."""
    nesting = "".join(f"{'    ' * d}def _():\n" for d in range(depth))
    body = f"{'    ' * (depth + 1)}pass\n" if text.endswith(":") else ""
    source = f"{nesting}{'    ' * depth}{text}\n{body}"
    lines = black.format_str(source, mode=BLACK_MODE).splitlines()
    return "\n".join(lines[depth : len(lines) - bool(body)])[4 * depth :]


# -- one statement to black's leaves ----------------------------------------------------


def _tokens(text: str) -> list[tuple[int, str]]:
    tokens = []
    for value in _TOKEN.findall(text):
        first = value[0]
        if first in _OPS:
            tokens.append((_OPS[first], value))
        elif first.isascii() and (first.isalpha() or first == "_"):
            if first == "b" and value[1:2] in ("'", '"'):
                tokens.append((STRING, value))
            elif value in _UNSUPPORTED_NAMES:
                raise _Unsupported(value)
            else:
                tokens.append((NAME, value))
        elif first.isdigit():
            tokens.append((NUMBER, value))
        elif first == '"' or first == "'":
            tokens.append((STRING, value))
        elif first != " ":
            raise _Unsupported(f"cannot tokenize {value!r}")
    if not tokens:
        raise _Unsupported("empty statement")
    return tokens


def _leaves(tokens: list[tuple[int, str]]) -> list[Leaf]:
    """The leaves of black's LineGenerator for one statement: each knows its
    parent node's kind and the whitespace before it; invisible parens added."""
    is_def = tokens[0] == (NAME, "def")
    leaves: list[Leaf] = []
    stack: list[Leaf] = []  # open brackets
    previous: Leaf | None = None
    for index, (kind, value) in enumerate(tokens):
        leaf = Leaf(kind, value, source=index)
        prev_kind = previous.kind if previous is not None else None
        # After a name (not a keyword) or a closing bracket come trailers:
        # calls, subscripts, attributes.
        after_operand = prev_kind in CLOSING or (
            prev_kind == NAME and not (index == 1 and tokens[0][1] in _KEYWORDS)
        )
        enclosing = stack[-1] if stack else None
        if kind in OPENING:
            if is_def and index == 2:
                leaf.parent = PARAMETERS
            elif kind != LBRACE and after_operand:
                leaf.parent = TRAILER
            else:
                leaf.parent = ATOM
            stack.append(leaf)
        elif kind in CLOSING:
            if not stack or MATCHING[stack[-1].kind] != kind:
                raise _Unsupported("unbalanced brackets")
            leaf.parent = stack.pop().parent
        elif kind == COMMA:
            if (
                enclosing is not None
                and enclosing.kind == LPAR
                and enclosing.parent in (TRAILER, PARAMETERS)
            ):
                leaf.parent = ARGLIST
        elif kind == DOT:
            if after_operand:
                leaf.parent = TRAILER
            elif prev_kind in (None, DOT, LPAR, LSQB, LBRACE, COMMA, EQUAL, COLON):
                leaf.parent = ATOM  # part of ``...``
            else:
                raise _Unsupported("attribute of a literal or keyword")
        elif kind == MINUS:
            if after_operand or prev_kind in (NUMBER, STRING, DOT):
                raise _Unsupported("binary operator")
        elif kind == STAR:
            if not (enclosing is not None and enclosing.parent == PARAMETERS):
                raise _Unsupported("star argument")
        elif kind == EQUAL and enclosing is not None and enclosing.parent != TRAILER:
            raise _Unsupported("= inside a display")
        leaf.ws = _whitespace(leaf, previous, enclosing)
        leaves.append(leaf)
        previous = leaf
    if stack:
        raise _Unsupported("unbalanced brackets")
    return leaves if is_def else _add_invisible_parens(leaves)


def _whitespace(leaf: Leaf, previous: Leaf | None, enclosing: Leaf | None) -> str:
    """black's ``whitespace(leaf)`` for the leaves of Stitch's statements."""
    if previous is None:
        return ""
    kind, prev = leaf.kind, previous.kind
    if kind in _NO_SPACE_BEFORE or (kind == DOT and leaf.parent == TRAILER):
        return ""
    if prev in OPENING or prev == DOT or prev == MINUS:
        return ""
    if kind in OPENING and leaf.parent in (TRAILER, PARAMETERS):
        return ""
    if kind == EQUAL or prev == EQUAL:
        # A keyword argument's = has no spaces around it, an assignment's has.
        return "" if enclosing is not None else " "
    return " "


def _add_invisible_parens(leaves: list[Leaf]) -> list[Leaf]:
    """Invisible parens where black's normalize_invisible_parens puts them: around
    the value of ``del``, ``return`` and ``=``, and around a tuple target."""
    head = leaves[0]
    if head.kind == NAME and head.value in _KEYWORDS:
        if len(leaves) == 1:
            raise _Unsupported("bare keyword")
        return [head, *_wrapped(leaves[1:], " ")]
    depth = 0
    assign = None
    commas = False
    for index, leaf in enumerate(leaves):
        if leaf.kind in OPENING:
            depth += 1
        elif leaf.kind in CLOSING:
            depth -= 1
        elif depth == 0 and leaf.kind == EQUAL:
            if assign is not None:
                raise _Unsupported("chained assignment")
            assign = index
        elif depth == 0 and leaf.kind == COMMA:
            commas = True
    if assign is None:
        if commas:
            raise _Unsupported("tuple expression statement")
        return leaves
    targets, value = leaves[:assign], leaves[assign + 1 :]
    if not value or any(leaf.kind in OPENING for leaf in targets):
        raise _Unsupported("assignment target")
    if len(targets) > 1:
        targets = _wrapped(targets, "")
    return [*targets, leaves[assign], *_wrapped(value, " ")]


def _wrapped(leaves: list[Leaf], ws: str) -> list[Leaf]:
    """``leaves`` in invisible parens, unless they are a parenthesized tuple,
    ``()`` or a one-tuple, whose parens black keeps as they are."""
    first, last = leaves[0], leaves[-1]
    if first.kind == LPAR and first.parent == ATOM and _closing_of(leaves) is last:
        if len(leaves) == 2 or any(
            leaf.kind == COMMA and leaf.bracket_depth == 1 for leaf in leaves
        ):
            return leaves
        raise _Unsupported("redundant parentheses")
    first.ws = ""
    return [Leaf(LPAR, "", ws, ATOM), *leaves, Leaf(RPAR, "", "", ATOM)]


def _closing_of(leaves: list[Leaf]) -> Leaf | None:
    """The leaf closing the bracket ``leaves[0]`` opens; sets relative depths."""
    depth = 0
    for leaf in leaves:
        if leaf.kind in CLOSING:
            depth -= 1
            if depth == 0:
                return leaf
        leaf.bracket_depth = depth
        if leaf.kind in OPENING:
            depth += 1
    return None
