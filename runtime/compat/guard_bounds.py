"""How large a number a recorded guard may hold or compute, checked before sympy
computes it: each node as a guard is read or written (``guard_codec.py``),
and the guard evaluated at a call's sizes (:func:`evaluate`).

NOTE: [a recorded guard is bounded before anything is computed]
A guard comes from a cache entry, a fleet's store or a compile worker's pipe:
text this process did not write.  Nothing in it is evaluated as Python, but
sympy computes a node from numbers as it builds it: ``Pow(Integer(3),
Integer(10**15))`` is a number of 10**15 bits that never finishes, and
evaluating ``Pow(s0, Integer(4096))`` at a size is the same computation later.
So every node, before it is built (read, written, or evaluated at the sizes
of a call: :func:`evaluate`), is refused where it could compute a large number:

- the numbers it is built from hold at most ``MAX_BITS`` bits together (no
  sum, product or quotient of them is longer); a Float counts its magnitude,
  and holds at most ``MAX_PRECISION`` bits of precision;
- a power's exponent or a shift's amount, where it is a number, is at most
  ``MAX_EXPONENT``, and a power of a number is at most ``MAX_BITS`` bits;
- a polynomial in the sizes is of degree at most ``MAX_DEGREE`` (sympy's
  assumptions find the real roots of one as it is built: ``((s+1)**2+1)**2...``
  nested twelve times, of degree 4096, had not finished after 20 s);
  a constant exponent that is not a number (but for torch's ``Identity(5)``,
  read as its number) and a fractional power of a number (sympy factors the
  number) are refused.

Real guards hold sizes' bounds: 2147483647 (31 bits), 9223372036854775807 (63
bits), ``int_oo`` (its own class, no bits), products of a few sizes (a
tensor's numel), squares.  The bounds are far past them (a floor division by
``2**16384``, which a shift's guard made on torch 2.11, still reads), and what
they admit is cheap: a node of numbers costs microseconds, a polynomial of
degree 64 some 0.1 s of sympy's assumptions.  A text of ``MAX_TEXT``
characters built to be slow still costs seconds (13-19 s for 340 such
polynomials, on a busy 2-core machine): sympy's cost per node, not a hang.  A
guard past the bounds is refused like any other that does not decode: the
piece stays uncompiled, or the entry is passed over and the call compiles.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from stitch.core.errors import StitchCacheError

MAX_BITS = 1 << 16
MAX_EXPONENT = 1 << 12
MAX_PRECISION = 1 << 10
MAX_DEGREE = 64
_POWERS = ("Pow", "PowByNatural", "FloatPow")
_SHIFTS = ("LShift", "RShift")


class GuardCodecError(StitchCacheError):
    """A guard that cannot be written or read back exactly, or one past the
    bounds (the message names the guard and the node)."""


def number(value: Any) -> Any:
    """``value``, refused where it is a number past ``MAX_BITS`` bits."""
    if bits(value) > MAX_BITS:
        raise GuardCodecError(f"holds a number of {bits(value)} bits, past {MAX_BITS}")
    return value


def bits(value: Any) -> int:
    """The bits a number holds (a Float: its magnitude's); 0 for anything else
    (a symbol, an infinity, an expression whose numbers were bounded)."""
    if getattr(value, "is_Rational", False):
        return int(value.p.bit_length() + value.q.bit_length() - 1)
    mpf = getattr(value, "_mpf_", None) if getattr(value, "is_Float", False) else None
    return max(mpf[2] + mpf[3], 0) if mpf is not None and mpf[1] else 0


def build(cls: Any, args: Sequence[Any]) -> Any:
    """``cls(*args)``, refused (:class:`GuardCodecError`) where it could compute a
    number past the bounds (NOTE: [a recorded guard is bounded before anything
    is computed]); what sympy made of it (``Mul(s, s)`` is ``Pow(s, 2)``) too."""
    bounded(cls, args)
    made = cls(*args)
    if getattr(made, "args", ()):
        bounded(made.func, made.args)
    return made


def bounded(cls: Any, args: Sequence[Any]) -> None:
    """Refuse a node ``cls(*args)`` past the bounds, before sympy builds it."""
    name = getattr(cls, "__name__", str(cls))
    held = sum(bits(a) for a in args)
    if held > MAX_BITS:
        raise GuardCodecError(
            f"gives {name} numbers of {held} bits together, past {MAX_BITS}"
        )
    degree = _degree_of(name, args)
    if degree > MAX_DEGREE:
        raise GuardCodecError(
            f"makes {name} a polynomial of degree {degree}, past {MAX_DEGREE}"
        )
    if name not in _POWERS + _SHIFTS or len(args) != 2:
        return
    base, exponent = args
    what = "shift" if name in _SHIFTS else "exponent"
    while type(exponent).__name__ == "Identity" and len(exponent.args) == 1:
        exponent = exponent.args[0]  # torch's wrapper that keeps 2 from folding
    if not getattr(exponent, "is_Number", False):
        if not getattr(exponent, "free_symbols", True):
            raise GuardCodecError(
                f"gives {name} a constant {what} that is not a number"
            )
        return  # a size: bounded where it is evaluated
    if exponent.is_Rational and exponent.q != 1 and base.is_Number:
        raise GuardCodecError(f"takes {name} of a number by the fraction {exponent}")
    size = _magnitude(exponent)
    if size > MAX_EXPONENT:
        raise GuardCodecError(
            f"gives {name} the {what} {shown(exponent)}, past {MAX_EXPONENT}"
        )
    grows = bits(base) + size if name == "LShift" else bits(base) * size
    if name != "RShift" and grows > MAX_BITS:
        raise GuardCodecError(
            f"makes {name} a number of about {grows} bits, past {MAX_BITS}"
        )


def _degree_of(name: str, args: Sequence[Any]) -> int:
    """The degree in the sizes of ``name(*args)``: a product's is the sum of
    its factors', a power's by a number its base's times that number, any
    other node's (a sum, a comparison, a function) its arguments' highest."""
    degrees = [_degree(a) for a in args]
    if name == "Mul":
        return sum(degrees)
    if name in _POWERS and len(args) == 2 and getattr(args[1], "is_Number", False):
        return degrees[0] * _magnitude(args[1])
    return max(degrees, default=0)


@functools.lru_cache(maxsize=1024)
def _degree(expr: Any) -> int:
    if getattr(expr, "is_Symbol", False):
        return 1
    if not getattr(expr, "args", ()):
        return 0
    return _degree_of(type(expr).__name__, expr.args)


def _magnitude(exponent: Any) -> int:
    if exponent.is_Rational:
        return max(abs(int(exponent.p)), int(exponent.q))
    if exponent.is_Float:
        value = abs(float(exponent))
        return MAX_EXPONENT + 1 if value > MAX_EXPONENT else math.ceil(value)
    return 0  # an infinity: sympy and torch give an infinity, at once


def check_tree(expr: Any) -> None:
    import sympy

    for node in sympy.preorder_traversal(expr):
        if node.args:
            bounded(node.func, node.args)
        else:
            number(node)


def evaluate(expr: Any, values: Mapping[Any, Any]) -> Any:
    """``expr.xreplace(values)`` (symbols to numbers: a call's sizes), each node
    rebuilt under the bounds it was read under (NOTE: [a recorded guard is
    bounded before anything is computed]); :class:`GuardCodecError` naming the
    guard and the values where a node is refused or sympy refuses it."""
    import sympy

    numbers = {
        s: sympy.Integer(v) if isinstance(v, int) else v for s, v in values.items()
    }
    try:
        for value in numbers.values():
            number(value)
        return _at(expr, numbers)
    except (
        GuardCodecError,
        TypeError,
        ValueError,
        ArithmeticError,
        RecursionError,
    ) as exc:
        at = ", ".join(
            f"{s}={shown(v)}" for s, v in numbers.items() if s in expr.free_symbols
        )
        raise GuardCodecError(
            f"guard {shown(expr)} does not evaluate at {at or 'no size'}: "
            f"{shown(exc)}"
        ) from None


def _at(node: Any, numbers: Mapping[Any, Any]) -> Any:
    if not node.args:
        return numbers.get(node, node)
    args = [_at(a, numbers) for a in node.args]
    if all(a is b for a, b in zip(args, node.args, strict=True)):
        return node
    return build(node.func, args)


def shown(value: Any) -> str:
    """``value`` as text for a message, shortened (and never a number past
    Python's 4300 digits, which ``str`` refuses)."""
    try:
        text = str(value)
    except ValueError:
        return f"<{type(value).__name__} with a number past 4300 digits>"
    return text if len(text) <= 200 else text[:200] + "..."
