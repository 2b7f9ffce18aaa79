"""What the CUDA graph runtime of one compiled graph needs besides its pieces, as a literal.

NOTE: [a saved function rebuilds its graphs from a plan]
Graphs are captured in each process, but what decides how they wrap the
pieces comes from the FX graph: which arguments are the runtime size, which
inputs are padded (their trailing dims, dtype, device, pad value), which
outputs are sliced, and which piece is called last (its graph outputs are weak
references).  A :class:`GraphPlan` holds exactly that, so a process that loads
a saved function (no graph, no split: ``pipeline/saved_function.py``) builds the same
padded runner and per-size graph tables as the process that compiled it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import torch

from ..store import codec
from ..store.codec import RecordError
from ..store.records import SavedDynamicInput, SavedGraphPlan
from .padding_plan import DynamicInput, PaddingPlan

WHERE = "the saved CUDA graph plan"


@dataclasses.dataclass(frozen=True)
class GraphPlan:
    """The padding plan and the last piece called (an index into the pieces, -1: none)."""

    padding: PaddingPlan
    last: int

    def to_record(self) -> SavedGraphPlan:
        p = self.padding
        return SavedGraphPlan(
            size_index=p.size_index,
            size_indices=tuple(p.size_indices),
            dynamic=tuple(
                SavedDynamicInput(
                    index=d.index,
                    name=d.name,
                    rest=tuple(d.rest),
                    dtype=str(d.dtype).removeprefix("torch."),
                    device=str(d.device),
                    pad=d.pad,
                )
                for d in p.dynamic
            ),
            slice_outputs=tuple(p.slice_outputs),
            flat_output=p.flat_output,
            last=self.last,
        )

    def to_literal(self) -> dict[str, Any]:
        """The plan as plain data (what a saved reference holds)."""
        return msgspec.to_builtins(self.to_record())

    @classmethod
    def from_literal(cls, data: Any, where: str = WHERE) -> GraphPlan:
        """The plan a saved function recorded; :class:`StitchCacheError` naming a
        bad field (``where``: what holds it)."""
        return cls.from_record(codec.convert(SavedGraphPlan, data, where))

    @classmethod
    def from_record(cls, record: SavedGraphPlan, where: str = WHERE) -> GraphPlan:
        dynamic = []
        for i, d in enumerate(record.dynamic):
            dtype = getattr(torch, d.dtype, None)
            if not isinstance(dtype, torch.dtype):
                raise RecordError(
                    where, f"dynamic[{i}].dtype", f"is {d.dtype!r}, not a torch dtype"
                )
            try:
                device = torch.device(d.device)
            except RuntimeError as exc:
                raise RecordError(where, f"dynamic[{i}].device", str(exc)) from None
            dynamic.append(
                DynamicInput(d.index, d.name, tuple(d.rest), dtype, device, d.pad)
            )
        padding = PaddingPlan(
            record.size_index,
            tuple(record.size_indices),
            tuple(dynamic),
            tuple(record.slice_outputs),
            record.flat_output,
        )
        return cls(padding, record.last)
