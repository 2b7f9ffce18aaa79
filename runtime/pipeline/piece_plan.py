"""Planning one piece: its shape targets and the compile key of each.

A plan says what a piece is compiled for (the general shape, compile ranges,
static sizes) and under which content key each runnable is cached and shared
with structurally identical pieces.  Plans come from fake propagation over the
split graph (:func:`piece_inputs` in ``fake_propagation.py``) on a cold start,
or from the cache index.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch.fx as fx

from stitch.codegen import structural_hash
from stitch.codegen.fingerprint import string_constants

from ..compat.shapes import size_bounds
from ..config import CompilationConfig
from ..size import RuntimeSize
from ..store.cache import CompileCache
from ..store.digests import key_hash
from ..targets import Target, targets_for
from .fake_propagation import PieceArgs
from .piecewise import other_sizes

log = logging.getLogger("stitch")


@dataclasses.dataclass(frozen=True)
class StringKeys:
    """Keys of a piece with string constants, before the string check.

    NOTE: [layer names do not defeat dedup]
    Pieces that differ only in string constants (a layer name passed to an op)
    share a normalized key.  The first of them is compiled with its own strings;
    when none of them appears in the code Inductor generated (the op was
    decomposed or the string was dead), every repeated piece reuses that artifact.
    Otherwise the strings are baked into the code and each distinct set of
    strings compiles on its own.
    """

    normalized: str
    exact: str
    strings: list[str]


# A compile key, or the two candidates of a piece with strings.
KeyChoice = str | StringKeys


@dataclasses.dataclass(frozen=True)
class PiecePlan:
    """What one compiled piece is built for."""

    name: str
    size_index: int | None  # index of the runtime-size argument, if dynamic
    targets: tuple[Target, ...]
    keys: tuple[KeyChoice, ...]  # one per target


class UnfixedSizes:
    """The pieces of one graph whose static targets were left out, reported once
    (NOTE: [sizes that move with the token count] in piecewise.py)."""

    def __init__(self) -> None:
        self.pieces: dict[str, list[str]] = {}

    def report(self, sizes: Sequence[int]) -> None:
        if not self.pieces:
            return
        first, others = next(iter(self.pieces.items()))
        log.warning(
            "stitch: compile_sizes %s are left out of %d piece(s) (%s, ...): their "
            "inputs depend on %s, sizes that move apart from the runtime size, which "
            "no static compile fixes; those pieces run their general runnable at "
            "every size",
            list(sizes),
            len(self.pieces),
            first,
            ", ".join(others),
        )


def plan_piece(
    name: str,
    graph: fx.GraphModule,
    args: tuple[Any, ...],
    size_index: int | None,
    config: CompilationConfig,
    key_salt: str,
    unfixed: UnfixedSizes | None = None,
) -> PiecePlan:
    """Plan a piece from its fake example arguments.

    ``key_salt`` holds what every key of this compilation shares (compiler name
    and config hash); ``unfixed`` collects the piece when its static targets
    are left out.
    """
    targets = targets_for(
        config.compile_sizes, config.compile_ranges(), size_index is not None
    )
    if size_index is not None:
        targets = reachable(targets, args[size_index], name)
        size = args[size_index]
        others = other_sizes(args, size.node.expr) if targets else []
        if others and any(t.static for t in targets):
            targets = [t for t in targets if not t.static]
            if unfixed is not None:
                unfixed.pieces[name] = others
    return PiecePlan(
        name,
        size_index,
        tuple(targets),
        tuple(keys_for(graph, args, targets, key_salt)),
    )


def recalled_or_planned(
    name: str,
    graph: fx.GraphModule,
    args: PieceArgs,
    cache: CompileCache | None,
    size: RuntimeSize | None,
    config: CompilationConfig,
    key_salt: str,
    unfixed: UnfixedSizes | None,
) -> PiecePlan:
    """The piece's plan as the cache entry recorded it, else planned anew.

    NOTE: [warm start skips fake propagation]
    A plan needs the piece's fake inputs, which come from running the split
    graph over fake tensors (seconds on deep models).  A cache entry is keyed
    by the whole graph and its input metadata, so the per-piece records in
    its index (size argument, compile keys) can be used as they are, once
    each artifact's identity agrees (see NOTE: [a recorded plan is checked
    against its artifacts] in store/cache.py).
    """
    recorded = cache.recorded_plan(name, graph, config.compile) if cache else None
    if recorded is not None:
        size_index, targets, keys = recorded
        return PiecePlan(name, size_index, tuple(targets), tuple(keys))
    piece_args = args(name)
    size_index = size.piece_argument(piece_args) if size is not None else None
    return plan_piece(name, graph, piece_args, size_index, config, key_salt, unfixed)


def keys_for(
    graph: fx.GraphModule, args: tuple[Any, ...], targets: Sequence[Target], salt: str
) -> list[KeyChoice]:
    """Compile keys per target: a plain key, or a :class:`StringKeys` choice."""
    strings = string_constants(graph)
    if not strings:
        base = structural_hash(graph, args) + salt
        return [digest(f"{base}|{compiled_as(t)}") for t in targets]
    normalized = structural_hash(graph, args, abstract_strings=True) + salt
    exact = normalized + repr(strings)
    return [
        StringKeys(
            digest(f"{normalized}|{compiled_as(t)}"),
            digest(f"{exact}|{compiled_as(t)}"),
            strings,
        )
        for t in targets
    ]


def compiled_as(target: Target) -> str:
    """The part of a compile key that says what the compile specializes to.

    NOTE: [ranges share the general artifact]
    A range target is compiled from the same symbolic inputs as the general
    target: its bounds reach neither Inductor nor any pass, so the compile
    would give the general artifact byte for byte (the cache index showed the
    same sha256).  Its key is therefore the general key, and the range runs
    the general runnable at no compile cost.  Should a compile ever depend on
    the range (say, a pass that reads it), the range gets a key of its own here.
    """
    return Target("general").key() if target.kind == "range" else target.key()


def reachable(targets: list[Target], size: Any, name: str) -> list[Target]:
    """Drop static sizes and ranges the runtime size can never take.

    Dynamo bounds a backed size below by 2 (size 1 gets its own static graph),
    so compiling size 1 into the dynamic graph would only waste a compile.
    """
    try:
        lower, upper = size_bounds(size)
    except Exception:  # noqa: BLE001 - no range information: keep every target
        return targets
    kept = []
    for t in targets:
        if t.kind != "general" and (
            t.hi < lower or (upper is not None and t.lo > upper)
        ):
            log.debug(
                "piece %s: %s is outside the size's range [%s, %s]",
                name,
                t.describe(),
                lower,
                upper,
            )
            continue
        kept.append(t)
    return kept


def digest(text: str) -> str:
    return key_hash(text)


def piece_state(outcomes: Sequence[str]) -> str:
    """A piece's cache state from its targets' outcomes.  "shared" outcomes reuse
    a runnable of this call (a repeated piece's, or this piece's general one for its
    ranges): they neither hit nor miss."""
    if all(o == "shared" for o in outcomes):
        return "shared"
    if "refused" in outcomes:
        return "refused"
    if "hit" in outcomes:
        return "partial" if "miss" in outcomes else "hit"
    return "miss"
