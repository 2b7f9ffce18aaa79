"""black's line splitting, ported for the statements Stitch emits.

NOTE: [a port of black's right-hand split]
black (pinned in pyproject.toml) defines the format of emitted source, but it
takes about 4 ms to lay out one long statement, most of the time of emitting a
large model.  This module replays the code path of black's
``linegen.transform_line`` for the statements Stitch writes: ``transform_line``,
``run_transformer`` with its second opinion under forced optional parentheses,
``right_hand_split_with_omits`` and ``generate_trailers_to_omit``,
``_maybe_split_omitting_optional_parens`` with ``can_omit_invisible_parens`` and
``_prefer_split_rhs_oop_over_rhs``, ``delimiter_split``, ``left_hand_split`` and
``bracket_split_build_line``.  Functions keep black's names and order and its
side effects: black makes optional parentheses visible, resets prefixes and
orphans leaves in place, and later decisions see that.  Where black asks its
syntax tree, a :class:`Leaf` carries the answer (``parent``, ``has_parent``).
Comments, strings spanning lines, operators, comprehensions, ``with`` and the
preview features never occur in Stitch's statements and are left out;
:mod:`.layout` hands anything it cannot describe to black itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from black.strings import str_width

from .lines import (
    ATOM,
    BRACKETS,
    CLOSING,
    COMMA,
    COMMA_PRIORITY,
    DOT_PRIORITY,
    EQUAL,
    LINE_LENGTH,
    LPAR,
    OPENING,
    RBRACE,
    RPAR,
    RSQB,
    TRAILER,
    CannotSplit,
    Leaf,
    Line,
    ensure_visible,
    get_leaves_inside_matching_brackets,
    is_line_short_enough,
    is_one_sequence_between,
    line_to_string,
    new_comma,
    parent_of,
)

# -- transforms (black's linegen) -------------------------------------------------------


def transform_line(
    line: Line, force_parens: bool = False, line_str: str | None = None
) -> list[Line]:
    if line_str is None:
        line_str = line_to_string(line)
    if (
        not line.should_split_rhs
        and not line.magic_trailing_comma
        and str_width(line_str) <= LINE_LENGTH
    ):
        return [line]
    if line.is_def:
        transformers = [left_hand_split]
    elif line.inside_brackets:
        transformers = [delimiter_split, right_hand_split_with_omits]
    else:
        transformers = [right_hand_split_with_omits]
    for transform in transformers:
        try:
            return run_transformer(line, transform, force_parens, line_str)
        except CannotSplit:
            continue
    return [line]


Transform = Callable[["Line", bool], Iterator["Line"]]


def run_transformer(
    line: Line, transform: Transform, force_parens: bool, line_str: str
) -> list[Line]:
    optional_parens = [
        b for b in line.bracket_tracker.invisible if b.bracket_depth == 0
    ]
    result: list[Line] = []
    for transformed in transform(line, force_parens):
        transformed_str = line_to_string(transformed)
        if transformed_str == line_str:
            raise CannotSplit("unchanged result")
        result.extend(transform_line(transformed, force_parens, transformed_str))
    if (
        force_parens
        or transform is not right_hand_split_with_omits
        or not line.bracket_tracker.invisible
        or any(b.value for b in optional_parens)
        or is_line_short_enough(result[0])
        or any(not leaf.has_parent for leaf in line.leaves)
    ):
        return result
    # append_leaves: copies take the leaves' places in black's tree, so the
    # originals lose their parents.
    line_copy = line.clone()
    for leaf in line.leaves:
        line_copy.append(leaf.copy())
        leaf.has_parent = False
    second_opinion = run_transformer(line_copy, transform, True, line_str)
    if all(is_line_short_enough(ln) for ln in second_opinion):
        result = second_opinion
    return result


def right_hand_split_with_omits(line: Line, force_parens: bool) -> Iterator[Line]:
    first_lines: list[Line] | None = None
    prefix_lengths: dict[int, int] = {}
    length = 4 * line.depth
    for leaf in line.leaves:
        prefix_lengths[id(leaf)] = length
        length += len(leaf.prefix) + len(leaf.value)
    for omit in generate_trailers_to_omit(line):
        if omit:
            target: Leaf | None = None
            for leaf in reversed(line.leaves):
                if leaf.kind in CLOSING and id(leaf) not in omit:
                    target = leaf.opening_bracket
                    break
            if (
                target is not None
                and target.value
                and prefix_lengths.get(id(target), 0) > LINE_LENGTH
            ):
                continue
        lines = list(right_hand_split(line, force_parens, omit))
        if first_lines is None and not omit:
            first_lines = lines
        if is_line_short_enough(lines[0]):
            yield from lines
            return
    if first_lines is not None:
        yield from first_lines
    else:
        yield from right_hand_split(line, force_parens)


def right_hand_split(
    line: Line, force_parens: bool, omit: set[int] | frozenset[int] = frozenset()
) -> Iterator[Line]:
    rhs = _first_right_hand_split(line, omit)
    yield from _maybe_split_omitting_optional_parens(rhs, line, force_parens, omit)


class RHSResult:
    __slots__ = ("head", "body", "tail", "opening_bracket", "closing_bracket")

    def __init__(
        self, head: Line, body: Line, tail: Line, opening: Leaf, closing: Leaf
    ) -> None:
        self.head, self.body, self.tail = head, body, tail
        self.opening_bracket, self.closing_bracket = opening, closing


def _first_right_hand_split(
    line: Line, omit: set[int] | frozenset[int] = frozenset()
) -> RHSResult:
    tail_leaves: list[Leaf] = []
    body_leaves: list[Leaf] = []
    head_leaves: list[Leaf] = []
    current = tail_leaves
    opening: Leaf | None = None
    closing: Leaf | None = None
    for leaf in reversed(line.leaves):
        if current is body_leaves and leaf is opening:
            current = head_leaves if body_leaves else tail_leaves
        current.append(leaf)
        if current is tail_leaves and leaf.kind in CLOSING and id(leaf) not in omit:
            opening = leaf.opening_bracket
            closing = leaf
            current = body_leaves
    if not (opening and closing and head_leaves):
        raise CannotSplit("no brackets found")
    tail_leaves.reverse()
    body_leaves.reverse()
    head_leaves.reverse()
    head = bracket_split_build_line(head_leaves, line, opening, "head")
    body = bracket_split_build_line(body_leaves, line, opening, "body")
    tail = bracket_split_build_line(tail_leaves, line, opening, "tail")
    bracket_split_succeeded_or_raise(head, body, tail)
    return RHSResult(head, body, tail, opening, closing)


def _maybe_split_omitting_optional_parens(
    rhs: RHSResult, line: Line, force_parens: bool, omit: set[int] | frozenset[int]
) -> Iterator[Line]:
    if (
        not force_parens
        and rhs.opening_bracket.kind == LPAR
        and not rhs.opening_bracket.value
        and rhs.closing_bracket.kind == RPAR
        and not rhs.closing_bracket.value
        and can_omit_invisible_parens(rhs)
    ):
        omit = {id(rhs.closing_bracket), *omit}
        try:
            rhs_oop = _first_right_hand_split(line, omit)
            if _prefer_split_rhs_oop_over_rhs(rhs_oop, rhs):
                yield from _maybe_split_omitting_optional_parens(
                    rhs_oop, line, force_parens, omit
                )
                return
        except CannotSplit as e:
            if line.is_chained_assignment:
                pass
            elif len(rhs.body.leaves) < 2 and not is_line_short_enough(rhs.body):
                raise CannotSplit("body is still too long and can't be split") from e
    ensure_visible(rhs.opening_bracket)
    ensure_visible(rhs.closing_bracket)
    for result in (rhs.head, rhs.body, rhs.tail):
        if result:
            yield result


def _prefer_split_rhs_oop_over_rhs(rhs_oop: RHSResult, rhs: RHSResult) -> bool:
    head = rhs.head.leaves
    if not (len(head) >= 2 and head[-2].kind == EQUAL):
        return True
    if not any(leaf.kind in BRACKETS for leaf in head[:-1]):
        return True
    if not is_line_short_enough(rhs.head, LINE_LENGTH - 1):
        return True
    if rhs.head.magic_trailing_comma is not None:
        return True
    rhs_head_equal_count = sum(leaf.kind == EQUAL for leaf in head)
    rhs_oop_head_equal_count = sum(leaf.kind == EQUAL for leaf in rhs_oop.head.leaves)
    if rhs_head_equal_count > 1 and rhs_head_equal_count > rhs_oop_head_equal_count:
        return False
    has_closing_bracket_after_assign = False
    for leaf in reversed(rhs_oop.head.leaves):
        if leaf.kind == EQUAL:
            break
        if leaf.kind in CLOSING:
            has_closing_bracket_after_assign = True
            break
    return has_closing_bracket_after_assign or (
        any(leaf.kind == EQUAL for leaf in rhs_oop.head.leaves)
        and is_line_short_enough(rhs_oop.head)
    )


def can_omit_invisible_parens(rhs: RHSResult) -> bool:
    line = rhs.body
    bt = line.bracket_tracker
    if not bt.delimiters:
        return True
    max_priority = bt.max_delimiter_priority()
    if bt.delimiter_count_with_priority(max_priority) > 1:
        return False
    if max_priority == DOT_PRIORITY:
        return True
    first, second = line.leaves[0], line.leaves[1]
    if first.kind in OPENING and second.kind not in CLOSING:
        if _can_omit_opening_paren(line, first):
            return True
    penultimate, last = line.leaves[-2], line.leaves[-1]
    if (
        last.kind == RPAR
        or last.kind == RBRACE
        or (last.kind == RSQB and leaf_parent_is_not_trailer(last))
    ):
        if penultimate.kind in OPENING:
            return False
        if _can_omit_closing_paren(line, last):
            return True
    return False


def leaf_parent_is_not_trailer(leaf: Leaf) -> bool:
    parent = parent_of(leaf)
    return parent is not None and parent != TRAILER


def _can_omit_opening_paren(line: Line, first: Leaf) -> bool:
    remainder = False
    length = 4 * line.depth
    index = -1
    # index is read after the loop
    for index, leaf, leaf_length in line.enumerate_with_length():  # noqa: B007
        if leaf.kind in CLOSING and leaf.opening_bracket is first:
            remainder = True
        if remainder:
            length += leaf_length
            if length > LINE_LENGTH:
                break
            if leaf.kind in OPENING:
                remainder = False
    else:
        if len(line.leaves) == index + 1:
            return True
    return False


def _can_omit_closing_paren(line: Line, last: Leaf) -> bool:
    length = 4 * line.depth
    seen_other_brackets = False
    for _, leaf, leaf_length in line.enumerate_with_length():
        length += leaf_length
        if leaf is last.opening_bracket:
            if seen_other_brackets or length <= LINE_LENGTH:
                return True
        elif leaf.kind in OPENING:
            seen_other_brackets = True
    return False


def bracket_split_succeeded_or_raise(head: Line, body: Line, tail: Line) -> None:
    tail_len = len(str(tail).strip())
    if not body:
        if tail_len == 0:
            raise CannotSplit("splitting brackets produced the same line")
        if tail_len < 3:
            raise CannotSplit("splitting brackets on an empty body is not worth it")


def bracket_split_build_line(
    leaves: list[Leaf], original: Line, opening_bracket: Leaf, component: str
) -> Line:
    result = Line(original.depth)
    if component == "body":
        result.inside_brackets = True
        result.depth += 1
        if (
            leaves
            and original.is_def
            and opening_bracket.value == "("
            and not any(leaf.kind == COMMA for leaf in leaves)
        ):
            # _ensure_trailing_comma: a lone parameter gets one.
            leaves.append(new_comma())
    track = (
        get_leaves_inside_matching_brackets(leaves) if component == "head" else set()
    )
    for leaf in leaves:
        result.append(leaf, preformatted=True, track_bracket=id(leaf) in track)
    if component == "body" and should_split_line(result, opening_bracket):
        result.should_split_rhs = True
    return result


def should_split_line(line: Line, opening_bracket: Leaf) -> bool:
    if parent_of(opening_bracket) is None or not line.leaves:
        return False
    trailing_comma = False
    exclude: tuple[int, ...] = ()
    last = line.leaves[-1]
    if last.kind == COMMA:
        trailing_comma = True
        exclude = (id(last),)
    try:
        max_priority = line.bracket_tracker.max_delimiter_priority(exclude)
    except ValueError:
        return False
    return max_priority == COMMA_PRIORITY and (
        trailing_comma or parent_of(opening_bracket) == ATOM
    )


def generate_trailers_to_omit(line: Line) -> Iterator[set[int]]:
    omit: set[int] = set()
    if not line.magic_trailing_comma:
        yield omit
    length = 4 * line.depth
    opening: Leaf | None = None
    closing: Leaf | None = None
    inner: set[int] = set()
    for index, leaf, leaf_length in line.enumerate_with_length(is_reversed=True):
        length += leaf_length
        if length > LINE_LENGTH:
            break
        if opening:
            if leaf is opening:
                opening = None
            elif leaf.kind in CLOSING:
                prev = line.leaves[index - 1] if index > 0 else None
                if (
                    prev
                    and prev.kind == COMMA
                    and leaf.opening_bracket is not None
                    and not is_one_sequence_between(
                        leaf.opening_bracket, leaf, line.leaves
                    )
                ):
                    break
                inner.add(id(leaf))
        elif leaf.kind in CLOSING:
            prev = line.leaves[index - 1] if index > 0 else None
            if prev and prev.kind in OPENING:
                inner.add(id(leaf))
                continue
            if closing:
                omit.add(id(closing))
                omit.update(inner)
                inner.clear()
                yield omit
            if (
                prev
                and prev.kind == COMMA
                and leaf.opening_bracket is not None
                and not is_one_sequence_between(leaf.opening_bracket, leaf, line.leaves)
            ):
                break
            if leaf.value:
                opening = leaf.opening_bracket
                closing = leaf


def delimiter_split(line: Line, force_parens: bool) -> Iterator[Line]:
    if not line.leaves:
        raise CannotSplit("line empty")
    last_leaf = line.leaves[-1]
    bt = line.bracket_tracker
    try:
        delimiter_priority = bt.max_delimiter_priority((id(last_leaf),))
    except ValueError:
        raise CannotSplit("no delimiters found") from None
    if (
        delimiter_priority == DOT_PRIORITY
        and bt.delimiter_count_with_priority(delimiter_priority) == 1
    ):
        raise CannotSplit("splitting a single attribute from its owner looks wrong")
    current = Line(line.depth, line.inside_brackets)
    for leaf in line.leaves:
        current.append(leaf, preformatted=True)
        if bt.delimiters.get(id(leaf)) == delimiter_priority:
            current.leaves[0].prefix = ""
            yield current
            current = Line(line.depth, line.inside_brackets)
    if current:
        if delimiter_priority == COMMA_PRIORITY and current.leaves[-1].kind != COMMA:
            current.append(new_comma())
        current.leaves[0].prefix = ""
        yield current


def left_hand_split(line: Line, force_parens: bool) -> Iterator[Line]:
    tail_leaves: list[Leaf] = []
    body_leaves: list[Leaf] = []
    head_leaves: list[Leaf] = []
    current = head_leaves
    matching: Leaf | None = None
    for leaf in line.leaves:
        if (
            current is body_leaves
            and leaf.kind in CLOSING
            and leaf.opening_bracket is matching
            and matching is not None
        ):
            ensure_visible(leaf)
            ensure_visible(matching)
            current = tail_leaves if body_leaves else head_leaves
        current.append(leaf)
        if current is head_leaves and leaf.kind == LPAR:
            matching = leaf
            current = body_leaves
    if not matching or not tail_leaves:
        raise CannotSplit("no brackets found")
    head = bracket_split_build_line(head_leaves, line, matching, "head")
    body = bracket_split_build_line(body_leaves, line, matching, "body")
    tail = bracket_split_build_line(tail_leaves, line, matching, "tail")
    bracket_split_succeeded_or_raise(head, body, tail)
    for result in (head, body, tail):
        if result:
            yield result
