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
pieces are loaded (:func:`install_guard`), as a compile would have; where
they do not hold, the call's key is chained with
them and it finds (or compiles) an entry of its own.  Inductor's FX graph
cache does the same with its ``guards_expr``.

sympy is imported inside the functions: ``import torch`` does not load it, and
a warm start (which checks no guards) must not pay for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .guard_bounds import evaluate, shown
from .guard_codec import encode, read_guard


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
    """The guards on backed symbols added since ``mark``, encoded (NOTE: [guards
    are recorded by structure, not printed] in ``guard_codec.py``), in the order
    added; :class:`GuardCodecError` for one that cannot be recorded.

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
            text = encode(expr)
            if text not in found:
                found.append(text)
    return found


def decode_guard(shape_env: Any, text: str) -> Any:
    """The recorded guard ``text`` as a sympy expression over this ShapeEnv's
    symbols, read by the codec's one reader (never evaluated: NOTE: [a recorded
    guard is bounded before anything is computed] in ``guard_bounds.py``);
    :class:`GuardCodecError` saying why when it does not decode."""
    return read_guard(text, {str(s): s for s in backed_values(shape_env)})


def check_guards(shape_env: Any, guards: Sequence[str]) -> str:
    """ "" when every guard holds for this call's inputs; else which one does not,
    and the values it was evaluated at.  Installs nothing; raises
    :class:`GuardCodecError` for a guard that does not decode, or whose value
    here would be past the codec's bounds."""
    import sympy

    backed = backed_values(shape_env)
    for text in guards:
        expr = decode_guard(shape_env, text)
        unknown = sorted(str(s) for s in expr.free_symbols if s not in backed)
        if unknown:
            return f"guard {shown(expr)} names sizes this graph does not have ({', '.join(unknown)})"
        value = evaluate(expr, backed)
        if value is not sympy.true:
            values = ", ".join(
                f"{s}={backed[s]}" for s in sorted(expr.free_symbols, key=str)
            )
            return f"guard {shown(expr)} does not hold for {values}"
    return ""


def install_guard(shape_env: Any, text: str) -> None:
    """Make the recorded guard ``text`` (checked to hold) a guard of this ShapeEnv,
    as the compile adding it did: Dynamo then guards the frame on it.  Raises
    what decoding or the ShapeEnv raises (the caller compiles instead:
    NOTE: [a warm load that fails compiles instead] in ``pipeline/warm_load.py``)."""
    shape_env.evaluate_expr(decode_guard(shape_env, text))
