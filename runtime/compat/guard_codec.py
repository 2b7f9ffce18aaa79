"""A recorded guard, as structural text that reads back to the very same expression.

NOTE: [guards are recorded by structure, not printed]
A guard the compile added (``Ne(FloorDiv(s38, s61), 0)``) was recorded with
``str()`` and read back with ``sympy.sympify``.  The printed text cannot tell
torch's integer functions from sympy's real ones: ``s38//s61`` reads back as
``floor(s38/s61)``, ``Max`` as sympy's, ``Mod`` as sympy's, and torch's range
analysis refuses such an expression (or worse, a warm start installs a
different guard than the compile added).  So a guard is written as its tree,
each node named by its class the way ``sympy.srepr`` writes it, torch's classes
(``torch.utils._sympy.functions`` and ``.numbers``) prefixed ``torch.``::

    Unequality(torch.FloorDiv(Symbol('s38', integer=True, positive=True),
                              Symbol('s61', integer=True, positive=True)), Integer(0))

and read back by walking Python's parse of that text (never evaluated) over an
allow-list of classes, each node rebuilt as ``cls(*args)``: sympy's own
invariant ``expr.func(*expr.args) == expr``, which torch's functions keep.
A class outside the allow-list is refused when a guard is written
(:class:`GuardCodecError`), so what is on disk always reads back.

NOTE: [which old text guards still read]
Entries written before this codec hold ``str()`` text.  Such a text is read
only where it cannot be ambiguous: comparisons (``Eq Ne Lt Le Gt Ge`` or
``== != < <= > >=``), ``And``/``Or``/``Not``, ``+``, ``-``, ``*`` and
integers over the ShapeEnv's symbols; nothing that prints a division, a
modulus, a power, a floor, a min or max, or any other function (``/``, ``//``,
``%``, ``**`` and every other name), whose printed form is the same for
torch's integer function and sympy's real one, and no shift (``<<``, ``>>``:
``str()`` never prints one).  Any other text is not a guard this version can
read, and the entry is treated as missing.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from collections.abc import Mapping
from typing import Any

from . import python_ast
from .guard_bounds import (
    MAX_BITS,
    MAX_PRECISION,
    GuardCodecError,
    build,
    check_tree,
    number,
    shown,
)

TORCH_PREFIX = "torch."
# sympy's classes a guard may hold besides torch's; atoms are written apart.
_SYMPY_CLASSES = (
    "Add Mul Pow Equality Unequality StrictLessThan LessThan StrictGreaterThan "
    "GreaterThan And Or Not Max Min Abs floor ceiling Mod Piecewise ExprCondPair "
    "BooleanTrue BooleanFalse Infinity NegativeInfinity"
).split()
_ATOMS = ("Symbol", "Integer", "Rational", "Float")
# Past this a text is not a guard a compile wrote (and would cost the parser):
# neither written nor read.
MAX_TEXT = 100_000
MAX_DEPTH = 64

# No "==" or "!=": str() never prints them, and Python would compare the texts.
_LEGACY_TEXT = re.compile(r"(?:[A-Za-z0-9_ (),+\-*&|~]|[<>]=?)*")
_LEGACY_NAMES = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LEGACY_FUNCTIONS = ("Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not")
_LEGACY_NUMBERS = re.compile(r"(?<![A-Za-z0-9_])[0-9]+")


@functools.lru_cache(maxsize=1)
def torch_classes() -> dict[str, type]:
    """Every sympy class ``torch.utils._sympy.functions`` and ``.numbers``
    (``int_oo``, a bound a guard can hold) define, by name."""
    import sympy
    import torch.utils._sympy.functions as functions
    import torch.utils._sympy.numbers as numbers

    found = {}
    for module in (functions, numbers):
        for name in dir(module):
            value = getattr(module, name)
            if (
                isinstance(value, type)
                and issubclass(value, sympy.Basic)
                and value.__module__ == module.__name__
            ):
                found[value.__name__] = value
    return found


@functools.lru_cache(maxsize=1)
def _sympy_classes() -> dict[str, type]:
    import sympy

    return {n: getattr(sympy, n) for n in _SYMPY_CLASSES if hasattr(sympy, n)} | {
        "BooleanTrue": type(sympy.true),
        "BooleanFalse": type(sympy.false),
        "Infinity": type(sympy.oo),
        "NegativeInfinity": type(-sympy.oo),
    }


def _name_of(node: Any) -> str:
    cls = type(node)
    torch_cls = torch_classes().get(cls.__name__)
    if torch_cls is cls:
        return TORCH_PREFIX + cls.__name__
    if _sympy_classes().get(cls.__name__) is cls:
        return cls.__name__
    raise GuardCodecError(f"holds {cls.__module__}.{cls.__name__} ({node})")


def encode(expr: Any) -> str:
    """``expr`` as structural text; :class:`GuardCodecError` naming the guard and
    the node when it holds a class outside the allow-list."""
    try:
        check_tree(expr)  # what is on disk reads back
        text = _encode(expr)
    except GuardCodecError as exc:
        raise GuardCodecError(f"guard {expr} cannot be recorded: it {exc}") from None
    if len(text) > MAX_TEXT:
        raise GuardCodecError(
            f"guard {str(expr)[:80]} cannot be recorded: it is longer than "
            f"{MAX_TEXT} characters"
        )
    return text


def _encode(node: Any) -> str:
    import sympy

    if isinstance(node, sympy.Symbol):
        if type(node) is not sympy.Symbol:
            raise GuardCodecError(f"holds the symbol {node!r} of {type(node)}")
        return sympy.srepr(node)
    if isinstance(node, sympy.Integer):
        return f"Integer({_int(int(node))})"
    if isinstance(node, sympy.Rational):
        return f"Rational({_int(node.p)}, {_int(node.q)})"
    if isinstance(node, sympy.Float):
        return sympy.srepr(node)  # Float('<digits>', precision=<bits>): exact
    name = _name_of(node)
    return f"{name}({', '.join(_encode(a) for a in node.args)})"


def _int(value: int) -> str:
    # Python refuses decimal text of more than 4300 digits (a shift by
    # thousands of bits makes such a divisor); hex has no such limit.
    return str(value) if value.bit_length() < 1024 else hex(value)


def decode(text: str) -> Any:
    """The expression :func:`encode` wrote as ``text``; :class:`GuardCodecError`
    naming the guard and why when it is not such a text."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise GuardCodecError(f"guard {str(text)[:80]!r} is not a recorded guard")
    try:
        tree = python_ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise GuardCodecError(
            f"guard {shown(text)!r} does not parse ({type(exc).__name__})"
        ) from None
    try:
        return _decode(tree, 0)
    except GuardCodecError as exc:
        raise GuardCodecError(f"guard {shown(text)!r} does not decode: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
        raise GuardCodecError(
            f"guard {shown(text)!r} does not decode: sympy refused it "
            f"({type(exc).__name__}: {shown(exc)})"
        ) from None


def _decode(node: ast.AST, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise GuardCodecError(f"nests deeper than {MAX_DEPTH}")
    if not isinstance(node, ast.Call):
        raise GuardCodecError(f"holds {ast.dump(node)[:60]}, not a call")
    name, cls = _class_of(node.func)
    if name in _ATOMS:
        return _atom(name, node)
    if node.keywords:
        raise GuardCodecError(f"passes keywords to {name}")
    return build(cls, [_decode(a, depth + 1) for a in node.args])


def _class_of(func: ast.AST) -> tuple[str, Any]:
    if isinstance(func, ast.Name) and func.id in _ATOMS:
        return func.id, None
    if isinstance(func, ast.Name) and func.id in _sympy_classes():
        return func.id, _sympy_classes()[func.id]
    if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id + "." == TORCH_PREFIX
        and func.attr in torch_classes()
    ):
        return TORCH_PREFIX + func.attr, torch_classes()[func.attr]
    raise GuardCodecError(f"names {ast.unparse(func)[:60]}, not an allowed class")


def _constant(node: ast.AST, kind: type) -> Any:
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node, sign = node.operand, -1
    if not isinstance(node, ast.Constant) or type(node.value) is not kind:
        raise GuardCodecError(f"holds {ast.unparse(node)[:40]}, not a {kind.__name__}")
    if sign < 0 and kind is not int:
        raise GuardCodecError(f"negates a {kind.__name__}")
    return sign * node.value if kind is int else node.value


def _atom(name: str, node: ast.Call) -> Any:
    import sympy

    if name == "Symbol":
        if len(node.args) != 1:
            raise GuardCodecError("gives Symbol other than one name")
        assumptions = {k.arg: _constant(k.value, bool) for k in node.keywords}
        if None in assumptions:
            raise GuardCodecError("passes **keywords to Symbol")
        return sympy.Symbol(_constant(node.args[0], str), **assumptions)
    if name == "Float":
        (digits,) = (_constant(a, str) for a in node.args)
        keywords = {k.arg: _constant(k.value, int) for k in node.keywords}
        if set(keywords) != {"precision"}:
            raise GuardCodecError("gives Float other than its precision")
        if (
            len(digits) > MAX_PRECISION
            or not 0 < keywords["precision"] <= MAX_PRECISION
        ):
            raise GuardCodecError(
                f"gives Float digits or a precision, past {MAX_PRECISION}"
            )
        return number(sympy.Float(digits, precision=keywords["precision"]))
    if node.keywords:
        raise GuardCodecError(f"passes keywords to {name}")
    numbers = [_constant(a, int) for a in node.args]
    held = sum(n.bit_length() for n in numbers)
    if held > MAX_BITS:
        raise GuardCodecError(f"gives {name} {held} bits, past {MAX_BITS}")
    if name == "Integer" and len(numbers) == 1:
        return sympy.Integer(numbers[0])
    if name == "Rational" and len(numbers) == 2 and numbers[1] != 0:
        return sympy.Rational(*numbers)
    raise GuardCodecError(f"gives {name} {len(numbers)} numbers")


def decode_legacy(text: str, symbols: Mapping[str, Any]) -> Any:
    """A guard recorded as ``str()`` text before :func:`encode` existed, over the
    ShapeEnv's ``symbols`` by name; :class:`GuardCodecError` where the text is
    not unambiguous (NOTE: [which old text guards still read])."""
    import sympy

    if (
        not isinstance(text, str)
        or len(text) > MAX_TEXT
        or not _LEGACY_TEXT.fullmatch(text)
        or "**" in text
    ):
        raise GuardCodecError(
            f"guard {str(text)[:80]!r} was recorded as text that may print a "
            "division, modulus or power, which text cannot tell torch's from sympy's"
        )
    # NOTE: [a recorded guard is bounded before anything is computed]
    # (guard_bounds.py): sympy would compute 1<<(1<<40) as it reads it.
    if "<<" in text or ">>" in text:
        raise GuardCodecError(
            f"guard {shown(text)!r} was recorded as text holding a shift, which "
            "str() never prints"
        )
    digits = sum(len(d) for d in _LEGACY_NUMBERS.findall(text))
    if digits * math.log2(10) > MAX_BITS:
        raise GuardCodecError(
            f"guard {shown(text)!r} was recorded as text whose integers hold "
            f"more than {MAX_BITS} bits together"
        )
    names = set(_LEGACY_NAMES.findall(text))
    unknown = sorted(
        n for n in names if n not in symbols and n not in _LEGACY_FUNCTIONS
    )
    if unknown:
        raise GuardCodecError(
            f"guard {shown(text)!r} was recorded as text naming "
            f"{shown(', '.join(unknown))}: "
            "neither a size of this graph nor a comparison"
        )
    allowed = {n: getattr(sympy, n) for n in _LEGACY_FUNCTIONS} | {
        n: symbols[n] for n in names if n in symbols
    }
    try:
        read = sympy.sympify(text, locals=allowed)
        check_tree(read)  # s0*s0*...*s0 is a power
        return read
    except GuardCodecError as exc:
        raise GuardCodecError(f"guard {shown(text)!r} does not read: {exc}") from None
    except (
        sympy.SympifyError,
        SyntaxError,
        TypeError,
        ValueError,
        ArithmeticError,
        RecursionError,
    ) as exc:
        raise GuardCodecError(
            f"guard {shown(text)!r} does not parse ({type(exc).__name__})"
        ) from None


def read_guard(text: str, symbols: Mapping[str, Any]) -> Any:
    """A recorded guard (an entry's, a fleet store's, a worker's report) as a
    sympy expression, over ``symbols`` (this graph's sizes by name) where it is
    old text: the one way a recorded guard is read.  Structural text decodes
    (:func:`decode`); an older entry's text reads where it is unambiguous
    (:func:`decode_legacy`); neither evaluates anything (NOTE: [a recorded guard
    is bounded before anything is computed] in ``guard_bounds.py``).
    :class:`GuardCodecError` naming the guard and why, otherwise."""
    if not isinstance(text, str):
        raise GuardCodecError(f"guard {shown(text)!r} is not text")
    if is_structural(text):
        return decode(text)
    return decode_legacy(text, symbols)


def is_structural(text: str) -> bool:
    """Whether ``text`` was written by :func:`encode` (every such text names its
    symbols in quotes, which the old text form never held)."""
    return "'" in text


def readable(text: str) -> str:
    """The guard as sympy prints it, for messages (``text`` where it does not decode)."""
    if not is_structural(text):
        return text
    try:
        return str(decode(text))
    except Exception:  # noqa: BLE001 - a message falls back to the text
        return text
