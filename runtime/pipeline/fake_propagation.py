"""The pieces' fake inputs: one fake run of the split graph, recording what
each piece is called with.

A cold start plans each piece from these (``piece_plan.py``); a warm start
reads its plans from the cache index and runs this only for a miss.  Repeated
pieces' outputs are made from the first instance's rather than run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from stitch.codegen import structural_hash
from stitch.codegen.fingerprint import describe_example
from stitch.codegen.pieces import mutates
from stitch.core import StitchRuntimeError

from ..compat.fake import FakeTensorMode, fake_mode_of, propagating
from ..compat.pytree import tree_flatten, tree_unflatten
from ..workers.giving_way import give_way


def piece_inputs(
    split_gm: fx.GraphModule, fake_inputs: list[Any]
) -> dict[str, tuple[Any, ...]]:
    """Run the split graph over fake tensors; record each piece's inputs.

    NOTE: [a repeated piece's fake outputs are made, not run]
    A deep model's pieces are mostly repeated pieces: the same graph (every layer's
    piece) over inputs of the same sizes, strides and dtypes, so their
    outputs have the same metadata too.  A repeated piece's outputs are therefore made
    from the first instance's (``torch.empty_strided`` in the fake mode, views of
    this repeated piece's own inputs where the first's outputs viewed its inputs, and
    views of one new buffer where they viewed one intermediate) instead of
    running its graph: the fake run of a 32-layer example took about 1.1 s,
    nearly all of it the 31 repeats of each layer's pieces.  A piece that
    writes its inputs, or whose outputs have sizes of a symbol its inputs
    lack (an unbacked size), is always run.
    """
    recorded: dict[str, tuple[Any, ...]] = {}
    repeats = _RepeatedPieces()

    class Recorder(fx.Interpreter):
        def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
            give_way()
            recorded.setdefault(target, tuple(args))
            key = repeats.key(self.fetch_attr(target), args, kwargs)
            made = repeats.made(key, args)
            if made is not None:
                return made
            out = super().call_module(target, args, kwargs)
            repeats.remember(key, args, out)
            return out

    fake_mode = fake_mode_of(fake_inputs)
    if fake_mode is None:
        fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        fake_inputs = [
            fake_mode.from_tensor(v) if isinstance(v, torch.Tensor) else v
            for v in fake_inputs
        ]
    # NOTE: [fake propagation runs under the Python dispatcher] and NOTE: [fake
    # propagation binds no unbacked symbol] (compat/fake.py)
    with propagating(fake_mode):
        Recorder(split_gm).run(*fake_inputs)
    return recorded


class _RepeatedPieces:
    """The first run of each repeated piece's graph over its inputs' metadata (NOTE: [a
    repeated piece's fake outputs are made, not run])."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[tuple[Any, ...], Any]] = {}
        self.hashes: dict[int, str | None] = {}

    def key(self, graph: Any, args: Any, kwargs: Any) -> str | None:
        if kwargs or not isinstance(graph, fx.GraphModule):
            return None
        if id(graph) not in self.hashes:
            self.hashes[id(graph)] = None if mutates(graph) else structural_hash(graph)
        shape = self.hashes[id(graph)]
        if shape is None:
            return None
        described = []
        for a in args:
            if isinstance(a, torch.Tensor):
                described.append(f"{describe_example(a)}@{a.storage_offset()}")
            elif isinstance(a, (torch.SymInt, int, float, bool, str, type(None))):
                described.append(describe_example(a))
            else:
                return None
        return shape + "|" + ";".join(described)

    def remember(self, key: str | None, args: Any, out: Any) -> None:
        if key is not None and key not in self.first:
            self.first[key] = (tuple(args), out)

    def made(self, key: str | None, args: Any) -> Any:
        """The outputs of a repeated piece of an earlier run, made; None: run it."""
        if key is None or key not in self.first:
            return None
        first_args, first_out = self.first[key]
        leaves, spec = tree_flatten(first_out)
        inputs = {
            _storage(a): i
            for i, a in enumerate(first_args)
            if isinstance(a, torch.Tensor)
        }
        known = _symbols(first_args)
        if not _symbols(leaves) <= known:
            return None  # an unbacked size: each run binds its own
        # Outputs on one buffer of their own (views of one intermediate) are
        # views of one new buffer, as they were of one there.
        shared: dict[int, list[torch.Tensor]] = {}
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor) and _storage(leaf) not in inputs:
                shared.setdefault(_storage(leaf), []).append(leaf)
        bases = {}
        for storage, group in shared.items():
            if len({t.dtype for t in group}) > 1:
                return None
            first = group[0]
            if len(group) > 1 or first._is_view() or first.storage_offset():
                elements = first.untyped_storage().nbytes() // first.element_size()
                bases[storage] = torch.empty(
                    elements, dtype=first.dtype, device=first.device
                )
        made = []
        for leaf in leaves:
            if not isinstance(leaf, torch.Tensor):
                if not isinstance(leaf, (torch.SymInt, int, float, bool, type(None))):
                    return None
                made.append(leaf)
                continue
            storage = _storage(leaf)
            base = args[inputs[storage]] if storage in inputs else bases.get(storage)
            if base is not None:
                view = base.as_strided(leaf.shape, leaf.stride(), leaf.storage_offset())
                made.append(view)
            else:
                fresh = torch.empty_strided(
                    leaf.shape, leaf.stride(), dtype=leaf.dtype, device=leaf.device
                )
                made.append(fresh.requires_grad_(leaf.requires_grad))
        return tree_unflatten(made, spec)


def _storage(t: torch.Tensor) -> int:
    # The storage's identity (the tensors it is read from are all alive here).
    return t.untyped_storage()._cdata


def _symbols(values: Any) -> set[Any]:
    found: set[Any] = set()
    for v in values:
        if isinstance(v, torch.SymInt):
            found |= v.node.expr.free_symbols
        elif isinstance(v, torch.Tensor):
            for s in (*v.shape, *v.stride()):
                if isinstance(s, torch.SymInt):
                    found |= s.node.expr.free_symbols
    return found


class PieceArgs:
    """Each piece's fake inputs, from one fake run of the split graph, made on
    first use (see NOTE: [warm start skips fake propagation] in piece_plan.py)."""

    def __init__(self, split_gm: fx.GraphModule, fake_inputs: list[Any]) -> None:
        self.split_gm = split_gm
        self.fake_inputs = fake_inputs
        self._args: dict[str, tuple[Any, ...]] | None = None

    def __call__(self, name: str) -> tuple[Any, ...]:
        if self._args is None:
            self._args = piece_inputs(self.split_gm, self.fake_inputs)
        args = self._args.get(name)
        if args is None:
            raise StitchRuntimeError(f"piece {name} is never called by the split graph")
        return args
