"""What the CUDA graph runtime of one compiled graph needs besides its pieces, as a literal.

NOTE: [a saved function rebuilds its graphs from a plan]
Graphs are captured in each process, but what decides how they wrap the
pieces comes from the FX graph: which arguments are the runtime size, which
inputs are padded (their trailing dims, dtype, device, pad value), which
outputs are sliced, and which piece is called last (its graph outputs are weak
references).  A :class:`GraphPlan` holds exactly that, so a process that loads
a saved function (no graph, no split: ``pipeline/stitched.py``) builds the same
padded runner and per-size graph tables as the process that compiled it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from stitch.core.errors import StitchCacheError

from .padding import DynamicInput, PaddingPlan

PLAN_FORMAT = 1
# The config fields that decide which graphs wrap which pieces (the others,
# such as warm-ups or the address check, only change how a graph is run).
PLAN_FIELDS = (
    "cudagraph_mode",
    "cudagraph_capture_sizes",
    "max_full_cudagraph_size",
    "cudagraph_pad_values",
)


@dataclasses.dataclass(frozen=True)
class GraphPlan:
    """The padding plan and the last piece called (an index into the pieces, -1: none)."""

    padding: PaddingPlan
    last: int

    def to_literal(self) -> dict[str, Any]:
        p = self.padding
        return {
            "format": PLAN_FORMAT,
            "size_index": p.size_index,
            "size_indices": list(p.size_indices),
            "dynamic": [
                {
                    "index": d.index,
                    "name": d.name,
                    "rest": list(d.rest),
                    "dtype": str(d.dtype).removeprefix("torch."),
                    "device": str(d.device),
                    "pad": d.pad,
                }
                for d in p.dynamic
            ],
            "slice_outputs": list(p.slice_outputs),
            "flat_output": p.flat_output,
            "last": self.last,
        }

    @classmethod
    def from_literal(cls, data: Any) -> GraphPlan:
        """The plan a saved function recorded; :class:`StitchCacheError` naming a bad field."""
        where = "the saved CUDA graph plan"
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise StitchCacheError(f"{where} has an unknown format")

        def get(
            obj: dict[str, Any], name: str, ok: Any, expected: str, prefix: str = ""
        ) -> Any:
            value = obj.get(name)
            if not ok(value):
                raise StitchCacheError(
                    f"{where}: field {prefix}{name} is {value!r:.60}, expected {expected}"
                )
            return value

        def index(v: Any) -> bool:
            return type(v) is int and v >= 0

        def indices(v: Any) -> bool:
            return isinstance(v, list) and all(index(i) for i in v)

        dynamic = []
        items = get(data, "dynamic", lambda v: isinstance(v, list), "a list")
        for i, d in enumerate(items):
            at = f"dynamic[{i}]."
            if not isinstance(d, dict):
                raise StitchCacheError(f"{where}: field dynamic[{i}] is {d!r:.60}")
            dtype = getattr(torch, str(d.get("dtype")), None)
            if not isinstance(dtype, torch.dtype):
                raise StitchCacheError(
                    f"{where}: field {at}dtype is {d.get('dtype')!r:.60}, expected "
                    "a torch dtype name"
                )
            try:
                device = torch.device(get(d, "device", _is_str, "a device", at))
            except RuntimeError as exc:
                raise StitchCacheError(f"{where}: field {at}device: {exc}") from None
            dynamic.append(
                DynamicInput(
                    get(d, "index", index, "an int >= 0", at),
                    get(d, "name", _is_str, "a str", at),
                    tuple(get(d, "rest", indices, "a list of sizes", at)),
                    dtype,
                    device,
                    get(d, "pad", _is_number, "a number", at),
                )
            )
        size_index = get(data, "size_index", index, "an int >= 0")
        size_indices = tuple(get(data, "size_indices", indices, "a list of ints"))
        if size_index not in size_indices:
            raise StitchCacheError(f"{where}: size_index is not a size argument")
        padding = PaddingPlan(
            size_index,
            size_indices,
            tuple(dynamic),
            tuple(
                get(
                    data,
                    "slice_outputs",
                    lambda v: isinstance(v, list)
                    and all(isinstance(b, bool) for b in v),
                    "a list of bools",
                )
            ),
            get(data, "flat_output", lambda v: isinstance(v, bool), "a bool"),
        )
        last = get(data, "last", lambda v: type(v) is int and v >= -1, "an int >= -1")
        return cls(padding, last)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
