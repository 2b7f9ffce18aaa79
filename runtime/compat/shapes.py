"""The ShapeEnv: a size's range, backed values, and the guards a backend call adds.

NOTE: [the guards a backend call adds are part of its cache entry]
Dynamo hands a backend a graph over symbolic sizes; what the backend does with
them (fake propagation over the split graph, Inductor's lowering, a custom
pass reading ``x.shape[0] == 7``) can add guards and replacements to the
ShapeEnv: ``Eq(s27, 7)`` fixes the graph to one length, and the compiled
pieces with it.  Dynamo guards the frame on them, so this process is right;
but a cache entry is keyed before any of that happens (graph hash and the fake
inputs' description), so a second process with another length would find the
same key and load pieces compiled for the first: silently the wrong entry.
So the guards a call adds are recorded with its entry (:func:`added_guards`,
in the index), and a later call uses the entry only where they hold for its
own inputs (:func:`check_guards`), installing them as Dynamo's guards once its
pieces are loaded (:func:`install_guards`), as a compile would have; where
they do not hold, the call's key is chained with
them and it finds (or compiles) an entry of its own.  Inductor's FX graph
cache does the same with its ``guards_expr``.

sympy is imported inside the functions: ``import torch`` does not load it, and
a warm start (which checks no guards) must not pay for it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

# What a recorded guard may contain: names, numbers, operators, calls.  A
# guard is rebuilt with sympy (which evaluates text), so the index is checked
# against this first, and every name must be a symbol of this ShapeEnv or one
# of the functions below.
GUARD_TEXT = re.compile(r"[A-Za-z0-9_ (),.+\-*/%<>=!&|~]*")
_NAMES = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYMPY_NAMES = (
    "Eq Ne Lt Le Gt Ge And Or Not Mod Max Min Abs floor ceiling Integer Rational "
    "true false True False"
).split()


def known_equal(a: Any, b: Any) -> bool:
    """Whether two sizes (ints or SymInts) are provably equal; adds no guard."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return bool(statically_known_true(a == b))


def size_bounds(size: Any) -> tuple[int, int | None]:
    """The range Dynamo gave a symbolic size: ``(lower, upper or None)``.

    Raises when ``size`` carries no range (a plain int, no ShapeEnv).
    """
    bounds = size.node.shape_env.var_to_range.get(size.node.expr)
    lower, upper = int(bounds.lower), bounds.upper
    return lower, (int(upper) if upper.is_finite else None)


def backed_values(shape_env: Any) -> dict[Any, Any]:
    """Each backed symbol's value in the example inputs.

    NOTE: [backed_var_to_val]
    Newer releases keep the hints of backed symbols in ``backed_var_to_val``
    and older ones (2.11) in ``var_to_val``.
    """
    if shape_env is None:
        return {}
    found = getattr(shape_env, "backed_var_to_val", None)
    if found is None:
        found = getattr(shape_env, "var_to_val", None)
    return dict(found or {})


def float_symbols(expr: Any) -> list[str]:
    """Names of the float symbols in a sympy expression."""
    from torch.utils._sympy.symbol import SymT, symbol_is_type

    return [str(s) for s in expr.free_symbols if symbol_is_type(s, SymT.FLOAT)]


def is_float_value(symbol: Any, value: Any) -> bool:
    from torch.utils._sympy.symbol import SymT, symbol_is_type

    return symbol_is_type(symbol, SymT.FLOAT) and getattr(value, "is_Float", False)


# -- guards added by a backend call ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GuardMark:
    """The ShapeEnv's guards and replacements at one moment (see :func:`added_guards`)."""

    shape_env: Any
    guards: int
    replacements: dict[Any, Any]


def guard_mark(shape_env: Any) -> GuardMark | None:
    if shape_env is None or not hasattr(shape_env, "guards"):
        return None
    return GuardMark(
        shape_env, len(shape_env.guards), dict(getattr(shape_env, "replacements", {}))
    )


def added_guards(mark: GuardMark | None) -> list[str]:
    """The guards on backed symbols added since ``mark``, as text (in the order added).

    A replacement (``s27 -> 7``) counts as the guard ``Eq(s27, 7)``.
    """
    if mark is None:
        return []
    import sympy

    env = mark.shape_env
    exprs = [g.expr for g in env.guards[mark.guards :]]
    for symbol, value in getattr(env, "replacements", {}).items():
        if mark.replacements.get(symbol) != value:
            exprs.append(sympy.Eq(symbol, value, evaluate=False))
    backed = backed_values(env)
    found: list[str] = []
    for expr in exprs:
        if expr.free_symbols and expr.free_symbols <= set(backed):
            text = str(expr)
            if text not in found:
                found.append(text)
    return found


def check_guards(shape_env: Any, guards: Sequence[str]) -> str:
    """ "" when every guard holds for this call's inputs; else which one does not,
    and the values it was evaluated at.  Installs nothing."""
    import sympy

    backed = backed_values(shape_env)
    by_name = {str(s): s for s in backed}
    for text in guards:
        expr = parse_guard(text, by_name)
        if expr is None:
            return f"guard {text!r} names what this graph's sizes do not have"
        value = expr.xreplace(backed)
        if value is not sympy.true:
            values = ", ".join(
                f"{s}={backed[s]}" for s in sorted(expr.free_symbols, key=str)
            )
            return f"guard {text} does not hold for {values}"
    return ""


def install_guards(shape_env: Any, guards: Sequence[str]) -> None:
    """Make ``guards`` (checked to hold) guards of this ShapeEnv, as a compile adding
    them would have: Dynamo then guards the frame on them."""
    by_name = {str(s): s for s in backed_values(shape_env)}
    for text in guards:
        expr = parse_guard(text, by_name)
        if expr is not None:
            shape_env.evaluate_expr(expr)


def parse_guard(text: str, symbols: dict[str, Any]) -> Any:
    """``text`` as a sympy expression over ``symbols`` (None if it is not a safe guard)."""
    if not isinstance(text, str) or not GUARD_TEXT.fullmatch(text):
        return None
    import sympy

    names = _functions()
    allowed = {**names, **symbols}
    if any(n not in allowed for n in _NAMES.findall(text)):
        return None
    try:
        return sympy.sympify(text, locals=allowed)
    except (sympy.SympifyError, SyntaxError, TypeError, ValueError):
        return None


def _functions() -> dict[str, Any]:
    import sympy
    import torch.utils._sympy.functions as functions

    found = {n: getattr(sympy, n) for n in _SYMPY_NAMES if hasattr(sympy, n)}
    for name in dir(functions):
        value = getattr(functions, name)
        if isinstance(value, type) and issubclass(value, sympy.Basic):
            found[name] = value
    return found
