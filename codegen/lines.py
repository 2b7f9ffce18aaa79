"""The data black's line splitting works on: leaves, lines, bracket tracking.

Ports of black's ``Leaf`` (the parts used), ``lines.Line`` and
``brackets.BracketTracker`` for :mod:`.linesplit`; see the NOTE there.  Where
black asks its syntax tree, a :class:`Leaf` carries the answer: the kind of its
parent node, and whether it still has one.
"""

from __future__ import annotations

from collections.abc import Iterator

from black.strings import str_width

LINE_LENGTH = 88

# Token kinds (black's token types, as far as they matter here).
NAME, NUMBER, STRING, COMMA, DOT, EQUAL, COLON, MINUS, STAR = range(9)
LPAR, RPAR, LSQB, RSQB, LBRACE, RBRACE = range(9, 15)
OPENING = frozenset({LPAR, LSQB, LBRACE})
CLOSING = frozenset({RPAR, RSQB, RBRACE})
BRACKETS = OPENING | CLOSING
MATCHING = {LPAR: RPAR, LSQB: RSQB, LBRACE: RBRACE}

COMMA_PRIORITY = 18
DOT_PRIORITY = 1

# Kinds of parent node black looks at.
ATOM, TRAILER, PARAMETERS, ARGLIST, OTHER = (
    "atom",
    "trailer",
    "parameters",
    "arglist",
    "other",
)


class CannotSplit(Exception):
    """black's CannotSplit / CannotTransform: try the next transform."""


class Leaf:
    __slots__ = (
        "kind",
        "value",
        "prefix",
        "ws",
        "parent",
        "has_parent",
        "source",
        "bracket_depth",
        "opening_bracket",
    )

    def __init__(
        self, kind: int, value: str, ws: str = "", parent: str = OTHER, source: int = -1
    ) -> None:
        self.kind = kind
        self.value = value
        self.ws = ws  # the whitespace black puts before it, mid-line
        self.prefix = ""
        self.parent = parent  # the kind of its parent node in black's tree
        self.has_parent = True
        self.source = source  # index of the token it stands for; -1 if made here
        self.bracket_depth = 0
        self.opening_bracket: Leaf | None = None

    def copy(self) -> Leaf:
        """``Leaf(type, value)`` moved into the old leaf's place (append_leaves)."""
        leaf = Leaf(self.kind, self.value, self.ws, self.parent, self.source)
        leaf.has_parent = self.has_parent
        return leaf


def parent_of(leaf: Leaf) -> str | None:
    """The kind of ``leaf.parent`` in black's tree (None once it lost its parent)."""
    return leaf.parent if leaf.has_parent else None


def new_comma() -> Leaf:
    leaf = Leaf(COMMA, ",")
    leaf.has_parent = False
    return leaf


class BracketTracker:
    __slots__ = ("depth", "bracket_match", "delimiters", "previous", "invisible")

    def __init__(self) -> None:
        self.depth = 0
        self.bracket_match: dict[tuple[int, int], Leaf] = {}
        self.delimiters: dict[int, int] = {}
        self.previous: Leaf | None = None
        self.invisible: list[Leaf] = []

    def mark(self, leaf: Leaf) -> None:
        kind = leaf.kind
        depth = self.depth
        if kind in CLOSING:
            if depth == 0 and (0, kind) not in self.bracket_match:
                return
            depth = self.depth = depth - 1
            leaf.opening_bracket = self.bracket_match.pop((depth, kind))
            if not leaf.value:
                self.invisible.append(leaf)
        leaf.bracket_depth = depth
        if depth == 0:
            # is_split_before_delimiter / is_split_after_delimiter: a dot after a
            # bracket (``f(x).y``) and a comma are the only delimiters here.
            if kind == COMMA:
                self.delimiters[id(leaf)] = COMMA_PRIORITY
            elif kind == DOT:
                previous = self.previous
                if previous is not None and previous.kind in CLOSING:
                    self.delimiters[id(previous)] = DOT_PRIORITY
        if kind in OPENING:
            self.bracket_match[depth, MATCHING[kind]] = leaf
            self.depth = depth + 1
            if not leaf.value:
                self.invisible.append(leaf)
        self.previous = leaf

    def max_delimiter_priority(self, exclude: tuple[int, ...] = ()) -> int:
        return max(v for k, v in self.delimiters.items() if k not in exclude)

    def delimiter_count_with_priority(self, priority: int = 0) -> int:
        if not self.delimiters:
            return 0
        priority = priority or self.max_delimiter_priority()
        return sum(1 for p in self.delimiters.values() if p == priority)


class Line:
    __slots__ = (
        "depth",
        "leaves",
        "inside_brackets",
        "should_split_rhs",
        "magic_trailing_comma",
        "bracket_tracker",
    )

    def __init__(self, depth: int = 0, inside_brackets: bool = False) -> None:
        self.depth = depth
        self.leaves: list[Leaf] = []
        self.inside_brackets = inside_brackets
        self.should_split_rhs = False
        self.magic_trailing_comma: Leaf | None = None
        self.bracket_tracker = BracketTracker()

    def append(
        self, leaf: Leaf, preformatted: bool = False, track_bracket: bool = False
    ) -> None:
        leaves = self.leaves
        if leaves and not preformatted:
            leaf.prefix += leaf.ws
        if self.inside_brackets or not preformatted or track_bracket:
            self.bracket_tracker.mark(leaf)
            if (
                leaf.kind in CLOSING
                and leaves
                and leaves[-1].kind == COMMA
                and self.has_magic_trailing_comma(leaf)
            ):
                self.magic_trailing_comma = leaf
        leaves.append(leaf)

    def has_magic_trailing_comma(self, closing: Leaf) -> bool:
        if not (
            closing.kind in CLOSING and self.leaves and self.leaves[-1].kind == COMMA
        ):
            return False
        if closing.kind == RBRACE:
            return True
        if closing.kind == RSQB:
            return not (
                parent_of(closing) == TRAILER
                and closing.opening_bracket is not None
                and is_one_sequence_between(
                    closing.opening_bracket, closing, self.leaves, (LSQB, RSQB)
                )
            )
        return closing.opening_bracket is not None and not is_one_sequence_between(
            closing.opening_bracket, closing, self.leaves
        )

    @property
    def is_def(self) -> bool:
        return (
            bool(self.leaves)
            and self.leaves[0].kind == NAME
            and self.leaves[0].value == "def"
        )

    @property
    def is_chained_assignment(self) -> bool:
        return sum(leaf.kind == EQUAL for leaf in self.leaves) > 1

    def clone(self) -> Line:
        line = Line(self.depth, self.inside_brackets)
        line.should_split_rhs = self.should_split_rhs
        line.magic_trailing_comma = self.magic_trailing_comma
        return line

    def __bool__(self) -> bool:
        return bool(self.leaves)

    def __str__(self) -> str:
        if not self.leaves:
            return "\n"
        first = self.leaves[0]
        rest = "".join([leaf.prefix + leaf.value for leaf in self.leaves[1:]])
        return f"{first.prefix}{'    ' * self.depth}{first.value}{rest}\n"

    def enumerate_with_length(
        self, is_reversed: bool = False
    ) -> Iterator[tuple[int, Leaf, int]]:
        indexed = enumerate(self.leaves)
        if is_reversed:
            indexed = reversed(list(indexed))  # type: ignore[assignment]
        for index, leaf in indexed:
            yield index, leaf, len(leaf.prefix) + len(leaf.value)


def line_to_string(line: Line) -> str:
    return str(line).strip("\n")


def is_line_short_enough(line: Line, line_length: int = LINE_LENGTH) -> bool:
    return str_width(line_to_string(line)) <= line_length


def is_one_sequence_between(
    opening: Leaf,
    closing: Leaf,
    leaves: list[Leaf],
    brackets: tuple[int, int] = (LPAR, RPAR),
) -> bool:
    if (opening.kind, closing.kind) != brackets:
        return False
    depth = closing.bracket_depth + 1
    for index, leaf in enumerate(leaves):  # noqa: B007 - read after the loop
        if leaf is opening:
            break
    else:
        return False
    commas = 0
    for leaf in leaves[index + 1 :]:
        if leaf is closing:
            break
        if leaf.bracket_depth == depth and leaf.kind == COMMA:
            commas += 1
            if parent_of(leaf) == ARGLIST:
                commas += 1
                break
    return commas < 2


def ensure_visible(leaf: Leaf) -> None:
    if leaf.kind == LPAR:
        leaf.value = "("
    elif leaf.kind == RPAR:
        leaf.value = ")"


def get_leaves_inside_matching_brackets(leaves: list[Leaf]) -> set[int]:
    ids: set[int] = set()
    stack: list[tuple[int, list[int]]] = []
    started = False
    for leaf in leaves:
        if leaf.kind in OPENING:
            started = True
            stack.append((MATCHING[leaf.kind], [id(leaf)]))
        elif not started:
            continue
        elif leaf.kind in CLOSING:
            if not (stack and leaf.kind == stack[-1][0]):
                break
            _, level = stack.pop()
            level.append(id(leaf))
            ids.update(level)
        elif stack:
            stack[-1][1].append(id(leaf))
    return ids
