"""One namespace allocates every identifier in emitted source.

Modelled on torch.fx's ``_Namespace``: candidate names are sanitized, Python
keywords, builtins and reserved globals are refused, and clashes get ``_N``
suffixes.  The only input is the order of requests (graph order), so names never
depend on what else happened in the process.
"""

from __future__ import annotations

import builtins
import keyword
import re

from stitch.core.contract import (
    CONSTS_NAME,
    DISPATCH_NAME,
    FUNCTION_NAME,
    SUBMODS_NAME,
)

# Keywords, soft keywords and builtins are never handed out.
_REFUSED = (
    frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins))
)
_ILLEGAL = re.compile(r"[^0-9a-zA-Z_]+")

RESERVED_GLOBALS = frozenset(
    {
        SUBMODS_NAME,
        CONSTS_NAME,
        DISPATCH_NAME,
        FUNCTION_NAME,
        "torch",
        "operator",
        "math",
        "builtins",
        "_",
    }
)


class Namespace:
    """Hands out unique, valid, non-shadowing Python identifiers."""

    def __init__(self, reserved: frozenset[str] | set[str] = frozenset()) -> None:
        self._used: set[str] = set(reserved) | RESERVED_GLOBALS
        self._base_count: dict[str, int] = {}

    def child(self) -> Namespace:
        """A namespace for a function's locals: it avoids every name taken here."""
        return Namespace(self._used)

    def create(self, candidate: str) -> str:
        if candidate.isascii() and candidate.isidentifier():
            name = candidate
        else:
            name = _ILLEGAL.sub("_", candidate) or "_v"
            if name[0].isdigit():
                name = f"_{name}"
        base, num = name, None
        head, underscore, digits = name.rpartition("_")
        if underscore and digits.isdigit():  # ``add_5``: base ``add``, number 5
            base, num = head, int(digits)
        while name in self._used or name in _REFUSED:
            num = self._base_count.get(base, 0) + 1 if num is None else num + 1
            name = f"{base}_{num}"
        if num is not None:
            self._base_count[base] = max(self._base_count.get(base, 0), num)
        self._used.add(name)
        return name


_NUMBERED = re.compile(r"(.+?)(?:_\d+)?")


def base_name(name: str) -> str:
    """``add_tensor_5`` -> ``add_tensor``; ``x`` -> ``x``."""
    m = _NUMBERED.fullmatch(name)
    return m.group(1) if m else name
