"""Each part's settings: the sections of :class:`~stitch.runtime.CompilationConfig`.

A user writes vLLM's flat field names (``CompilationConfig(cache_dir=...)``); each
part of Stitch receives only its own section: the split :class:`SplitSettings`,
the compile :class:`CompileSettings`, CUDA graphs :class:`CUDAGraphSettings`, the
cache and the fleet's shared store :class:`CacheSettings`.

NOTE: [a field declares its checks and its place in the cache key]
Every field is declared once, here: its type and bounds as msgspec reads them
(``msgspec.convert`` checks a config against its sections), and a
:class:`Setting` saying whether it enters the cache key (``compute_hash``), and
why not when it does not, with another valid value a test perturbs it to
(tests/test_cache_key.py).  A field of ``CompilationConfig`` declared in no
section still enters the key, and that test fails until it is declared.
This module imports nothing of the pipeline: the store reads its section
without knowing the whole config.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import typing
from typing import Annotated, Any, Literal

import msgspec

from stitch.core.errors import StitchConfigError

# The URL schemes of cache_url a shared store exists for (store/shared/).
SHARED_SCHEMES = ("redis://", "rediss://", "unix://")
_SHARED_URL = "^$|^(" + "|".join(re.escape(s) for s in SHARED_SCHEMES) + ")"

_NONE = object()  # a declaration with no example value of its own


@dataclasses.dataclass(frozen=True)
class Setting:
    """A field's declaration beside its type: in the cache key or not (``why``
    not), what a value must be (for errors), another valid value."""

    key: bool
    must: str
    why: str = ""
    other: Any = _NONE
    # What a list's entry must be (errors name the entry), if the field is a list.
    entry: str = ""
    # Other fields ``other`` is only valid with.
    needs: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def has_other(self) -> bool:
        return self.other is not _NONE


def in_key(must: str, other: Any = _NONE, entry: str = "") -> Setting:
    """A field that changes the compiled code: it enters the cache key."""
    return Setting(True, must, other=other, entry=entry)


def not_in_key(
    why: str,
    must: str,
    other: Any,
    entry: str = "",
    needs: dict[str, Any] | None = None,
) -> Setting:
    """A field that changes no compiled code, and why."""
    return Setting(False, must, why, other, entry, needs or {})


class CUDAGraphMode(enum.Enum):
    """How compiled pieces run on a CUDA device."""

    NONE = 0
    PIECEWISE = 1
    FULL = 2
    FULL_AND_PIECEWISE = 3

    @classmethod
    def parse(cls, value: Any) -> CUDAGraphMode:
        if isinstance(value, cls):
            return value
        if isinstance(value, bool):
            raise StitchConfigError(
                f"CompilationConfig.cudagraph_mode={value!r}: give a mode name or "
                "number, not a bool"
            )
        if isinstance(value, int):
            for mode in cls:
                if mode.value == value:
                    return mode
        if isinstance(value, str):
            key = value.strip().upper().replace("-", "_")
            if key in cls.__members__:
                return cls[key]
        names = ", ".join(f"{m.name} ({m.value})" for m in cls)
        raise StitchConfigError(
            f"CompilationConfig.cudagraph_mode={value!r} is not one of: {names}"
        )


PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
_POSITIVE_INTS = "a list of positive ints"
_CUDA_GRAPHS = "CUDA graphs are a runtime wrapper"
_INDUCTOR_OPTIONS = "a dict of Inductor config names to values"


class SplitSettings(msgspec.Struct, kw_only=True):
    """Where the graph is split: the ops that run between compiled pieces."""

    splitting_ops: Annotated[
        list[Any],
        in_key(
            "a list of op names, ops or callables",
            other=["stitch::attention", "aten::mm"],
        ),
    ]


class CompileSettings(msgspec.Struct, kw_only=True):
    """How each piece compiles: the compiler, its sizes and ranges, its options
    and passes, and when it compiles (a tiered start)."""

    backend: Annotated[
        Literal["inductor", "eager"],
        in_key("one of ('inductor', 'eager')", other="eager"),
    ]
    compile_sizes: Annotated[
        list[PositiveInt], in_key(_POSITIVE_INTS, [4], entry="a positive int")
    ]
    compile_ranges_split_points: Annotated[
        list[PositiveInt], in_key(_POSITIVE_INTS, [32], entry="a positive int")
    ]
    max_num_batched_tokens: Annotated[
        int, msgspec.Meta(ge=1), in_key("an int >= 1", other=4096)
    ]
    inductor_compile_config: Annotated[
        dict[str, Any], in_key(_INDUCTOR_OPTIONS, {"max_autotune": True})
    ]
    # Inductor options for the static sizes alone (compile_sizes), over
    # inductor_compile_config.  NOTE: [options of one size]
    compile_sizes_inductor_config: Annotated[
        dict[str, Any],
        in_key(_INDUCTOR_OPTIONS, {"coordinate_descent_tuning": True}),
    ]
    # Custom Inductor passes run on every compiled piece's post-grad graph, in
    # order (stitch.runtime.passes); their uuids enter the key.  An example
    # value needs a pass object: the key test makes one.
    inductor_passes: Annotated[
        list[Any], in_key("a list of passes (fx.Graph callables with uuid())")
    ]
    # NOTE: [a tiered start] (pipeline/tiered/tier.py); None: the entry
    # point's default (NOTE: [where a tiered start is the default] in
    # pipeline/tiered/deferred.py).
    tiered_start: Annotated[
        bool | None,
        not_in_key(
            "when pieces compile, not what they compile to",
            "a bool, or None for the entry point's default",
            True,
        ),
    ]
    compile_workers: Annotated[
        int,
        msgspec.Meta(ge=0),
        not_in_key(
            "how many processes compile, not what",
            "an int >= 0 (0: one per two cores, at most four)",
            3,
        ),
    ]
    # A stitching file the user edited, run in place of the emitted source
    # (NOTE: [an edited stitching file runs in place of the emitted one] in
    # runtime/edited_source.py); "" runs the emitted source.
    stitching_source: Annotated[
        str,
        not_in_key(
            "which stitching file runs, checked against the emitted source; "
            "the pieces and the cached source are the same",
            "a str path to a Python file, or ''",
            "/tmp/edited_execution_fn.py",
        ),
    ]

    def compile_ranges(self) -> list[tuple[int, int]]:
        """Inclusive ``(lo, hi)`` ranges cut from ``[1, max_num_batched_tokens]``."""
        if not self.compile_ranges_split_points:
            return []
        ranges: list[tuple[int, int]] = []
        lo = 1
        for point in self.compile_ranges_split_points:
            ranges.append((lo, point))
            lo = point + 1
        ranges.append((lo, self.max_num_batched_tokens))
        return ranges


class CUDAGraphSettings(msgspec.Struct, kw_only=True):
    """How compiled pieces are captured and replayed as CUDA graphs (CUDA only).

    None of these enter the cache key: CUDA graphs wrap the compiled pieces at
    run time, and a saved forward records them apart (:meth:`plan_settings`)."""

    cudagraph_mode: Annotated[
        CUDAGraphMode, not_in_key(_CUDA_GRAPHS, "a CUDAGraphMode", "FULL")
    ]
    cudagraph_capture_sizes: Annotated[
        list[PositiveInt] | None,
        not_in_key(_CUDA_GRAPHS, _POSITIVE_INTS, [1, 2, 4], entry="a positive int"),
    ]
    max_cudagraph_capture_size: Annotated[
        PositiveInt | None, not_in_key(_CUDA_GRAPHS, "a positive int or None", 4)
    ]
    cudagraph_num_of_warmups: Annotated[
        int, msgspec.Meta(ge=0), not_in_key(_CUDA_GRAPHS, "an int >= 0", 2)
    ]
    cudagraph_copy_inputs: Annotated[bool, not_in_key(_CUDA_GRAPHS, "a bool", True)]
    # FULL_AND_PIECEWISE: padded sizes up to this run as one full graph, larger
    # capture sizes as piecewise graphs (None: all full; other modes: unused).
    max_full_cudagraph_size: Annotated[
        PositiveInt | None,
        not_in_key(
            _CUDA_GRAPHS,
            "a positive int or None",
            2,
            needs={"cudagraph_mode": "FULL_AND_PIECEWISE"},
        ),
    ]
    # Fill value of padded rows by forward-argument name (others pad with 0).
    cudagraph_pad_values: Annotated[
        dict[str, int | float],
        not_in_key(
            _CUDA_GRAPHS,
            "a dict of argument names to int or float fill values",
            {"positions": -1},
        ),
    ]
    # After CUDAGraphManager.capture_sizes(), a capture raises.
    cudagraph_forbid_capture_after_startup: Annotated[
        bool, not_in_key(_CUDA_GRAPHS, "a bool", True)
    ]
    # Debug: check at every replay that a piece's inputs kept their addresses.
    cudagraph_check_addresses: Annotated[bool, not_in_key(_CUDA_GRAPHS, "a bool", True)]

    def plan_settings(self) -> dict[str, Any]:
        """The fields that decide a CUDA graph plan, as a literal: not in the
        cache key, so a saved forward records and compares them apart."""
        return {
            "cudagraph_mode": self.cudagraph_mode.name,
            "cudagraph_capture_sizes": sorted(self.cudagraph_capture_sizes or ()),
            "max_full_cudagraph_size": self.max_full_cudagraph_size,
            "cudagraph_pad_values": dict(sorted(self.cudagraph_pad_values.items())),
        }


class CacheSettings(msgspec.Struct, kw_only=True):
    """Where compiled code is kept: the local cache, the fleet's shared store
    behind it (store/shared/), and the debug dump.  None of it changes what
    compiles, so none of it enters the cache key."""

    cache_dir: Annotated[
        str, not_in_key("where the cache is", "a str path", "/somewhere/else")
    ]
    disable_cache: Annotated[
        bool, not_in_key("whether the cache is used", "a bool", True)
    ]
    # "redis://host:port/db", else $STITCH_CACHE_URL; "" is none.
    cache_url: Annotated[
        str,
        msgspec.Meta(pattern=_SHARED_URL),
        not_in_key(
            "where the fleet's shared store is",
            f"a URL starting with one of {SHARED_SCHEMES}, or ''",
            "redis://127.0.0.1:6379/0",
        ),
    ]
    # A replica waits up to cache_wait_s for another one's compile of the key.
    cache_wait_s: Annotated[
        float,
        msgspec.Meta(gt=0),
        not_in_key(
            "how long a replica waits for another's compile",
            "a number of seconds > 0",
            5.0,
        ),
    ]
    # A lease lasts cache_lease_s unless renewed.
    cache_lease_s: Annotated[
        float,
        msgspec.Meta(gt=0),
        not_in_key(
            "how long a compile's lease lasts in the shared store",
            "a number of seconds > 0",
            5.0,
        ),
    ]
    # The store's cap (0: none), evicting the least recently used entries.
    cache_store_max_bytes: Annotated[
        int,
        msgspec.Meta(ge=0),
        not_in_key("the shared store's size cap", "an int >= 0 (0: no cap)", 1 << 20),
    ]
    debug_dump_path: Annotated[
        str, not_in_key("where debug files go", "a str path", "/tmp/dump")
    ]


SECTIONS: tuple[type[msgspec.Struct], ...] = (
    SplitSettings,
    CompileSettings,
    CUDAGraphSettings,
    CacheSettings,
)


def _declarations() -> dict[str, tuple[type[msgspec.Struct], Setting]]:
    declared: dict[str, tuple[type[msgspec.Struct], Setting]] = {}
    for section in SECTIONS:
        hints = typing.get_type_hints(section, include_extras=True)
        for name in section.__struct_fields__:
            settings = [m for m in hints[name].__metadata__ if isinstance(m, Setting)]
            if len(settings) != 1 or name in declared:
                raise TypeError(f"{section.__name__}.{name}: declare one Setting")
            declared[name] = (section, settings[0])
    return declared


# field name -> (its section, its declaration)
DECLARED: dict[str, tuple[type[msgspec.Struct], Setting]] = _declarations()
