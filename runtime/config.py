"""``CompilationConfig``: every knob of the backend, validated on construction."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
from collections.abc import Callable
from typing import Any

from stitch.codegen.matching import OpMatcher, entry_label
from stitch.core.errors import StitchConfigError

from .config_fields import (
    check_cache_fields,
    check_inductor_keys,
    checked_passes,
    did_you_mean,
    field_error,
    int_list,
)
from .passes.base import pass_uuid

BACKENDS = ("inductor", "eager")

# NOTE: [default splitting ops are names]
# Ops are matched by name, so the default needs no op registered: the core
# never imports the models or kernels that define them.  The defaults are the
# attention of each kind of model Stitch knows: the examples' op, the
# transformers integration's op (attn_implementation="stitch", stitch.runtime.hf)
# and PyTorch's own SDPA (transformers' default "sdpa" attention; the name also
# matches the torch function Dynamo keeps for it).  Most models hold only one of
# them, so a default that matches nothing never warns (splitting.py).
DEFAULT_SPLITTING_OPS = (
    "stitch::attention",
    "stitch::hf_attention",
    "stitch::paged_attention",
    "aten::scaled_dot_product_attention",
)


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


def default_capture_sizes(max_size: int) -> list[int]:
    """vLLM's default: 1, 2, 4, then steps of 8 up to 256, then steps of 16."""
    sizes = [1, 2, 4] + list(range(8, 257, 8)) + list(range(272, max_size + 1, 16))
    return [s for s in sizes if s <= max_size]


class _ChecksFieldNames(type):
    """Names a misspelled field with the one meant, where dataclass would only say
    "unexpected keyword argument"."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for name in kwargs:
            if name not in names:
                raise StitchConfigError(
                    f"CompilationConfig has no field {name!r}{did_you_mean(name, names)}"
                )
        return super().__call__(*args, **kwargs)


@dataclasses.dataclass
class CompilationConfig(metaclass=_ChecksFieldNames):
    """Configuration of :class:`stitch.runtime.StitchBackend`.

    Every field enters :meth:`compute_hash` but those ``NOT_HASHED`` names
    (cache and dump locations, CUDA graph settings).
    """

    backend: str = "inductor"
    splitting_ops: list[Any] | None = None
    compile_sizes: list[int] = dataclasses.field(default_factory=list)
    compile_ranges_split_points: list[int] = dataclasses.field(default_factory=list)
    max_num_batched_tokens: int = 8192
    inductor_compile_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Inductor options for the static sizes alone (compile_sizes), over
    # inductor_compile_config: a size compiled for itself can afford tuning the
    # general graph cannot (vLLM turns on max_autotune and
    # coordinate_descent_tuning there).  NOTE: [options of one size]
    compile_sizes_inductor_config: dict[str, Any] = dataclasses.field(
        default_factory=dict
    )
    # Custom Inductor passes run on every compiled piece's post-grad graph, in
    # order: objects callable on an fx.Graph with a uuid() (see
    # stitch.runtime.passes).  Their uuids enter the config hash.
    inductor_passes: list[Any] = dataclasses.field(default_factory=list)
    cache_dir: str = ""
    disable_cache: bool = False
    # The fleet's shared store behind the local cache (store/shared/):
    # "redis://host:port/db", else $STITCH_CACHE_URL; "" is none.  A replica
    # waits up to cache_wait_s for another one's compile of the same key; a
    # lease lasts cache_lease_s unless renewed; cache_store_max_bytes caps the
    # store (0: no cap), evicting the least recently used entries.
    cache_url: str = ""
    cache_wait_s: float = 600.0
    cache_lease_s: float = 30.0
    cache_store_max_bytes: int = 0
    debug_dump_path: str = ""
    # A tiered start (NOTE: [a tiered start], pipeline/tiered.py): the backend
    # returns once the source is emitted, every piece the cache lacks first runs
    # uncompiled, and compile workers (processes; 0: one per two cores, at most
    # four) compile them into the cache entry, each swapped in once it has run
    # equal to its uncompiled form.  Graphs on the CPU with a cache only.
    tiered_start: bool = False
    compile_workers: int = 0
    # CUDA graphs (used on CUDA devices only; nothing happens on CPU).
    cudagraph_mode: Any = CUDAGraphMode.PIECEWISE
    cudagraph_capture_sizes: list[int] | None = None
    max_cudagraph_capture_size: int | None = None
    cudagraph_num_of_warmups: int = 1
    cudagraph_copy_inputs: bool = False
    # FULL_AND_PIECEWISE: padded sizes up to this run as one full graph, larger
    # capture sizes as piecewise graphs (None: all full; other modes: unused).
    max_full_cudagraph_size: int | None = None
    # Fill value of padded rows by forward-argument name (others pad with 0); the
    # example models take {"positions": -1}: padded tokens write no KV cache.
    cudagraph_pad_values: dict[str, float] = dataclasses.field(default_factory=dict)
    # After CUDAGraphManager.capture_sizes(), a capture raises instead of
    # silently capturing while serving.
    cudagraph_forbid_capture_after_startup: bool = False
    # Debug: check at every replay that a piece's tensor inputs kept their addresses.
    cudagraph_check_addresses: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise field_error("backend", self.backend, f"must be one of {BACKENDS}")
        if self.splitting_ops is None:
            self.splitting_ops = list(DEFAULT_SPLITTING_OPS)
        if not isinstance(self.splitting_ops, (list, tuple)):
            raise field_error(
                "splitting_ops",
                self.splitting_ops,
                "must be a list of op names, ops or callables",
            )
        try:
            OpMatcher.parse(self.splitting_ops)
        except ValueError as exc:
            raise field_error("splitting_ops", self.splitting_ops, str(exc)) from None
        self.splitting_ops = list(self.splitting_ops)
        if (
            type(self.max_num_batched_tokens) is not int
            or self.max_num_batched_tokens < 1
        ):
            raise field_error(
                "max_num_batched_tokens",
                self.max_num_batched_tokens,
                "must be an int >= 1",
            )
        self.compile_sizes = int_list("compile_sizes", self.compile_sizes)
        for size in self.compile_sizes:
            if size > self.max_num_batched_tokens:
                raise field_error(
                    "compile_sizes",
                    self.compile_sizes,
                    f"size {size} exceeds max_num_batched_tokens="
                    f"{self.max_num_batched_tokens}",
                )
        points = int_list(
            "compile_ranges_split_points", self.compile_ranges_split_points
        )
        for p in points:
            if p >= self.max_num_batched_tokens:
                raise field_error(
                    "compile_ranges_split_points",
                    self.compile_ranges_split_points,
                    f"split point {p} must be below max_num_batched_tokens="
                    f"{self.max_num_batched_tokens}",
                )
        self.compile_ranges_split_points = points
        for name in ("inductor_compile_config", "compile_sizes_inductor_config"):
            check_inductor_keys(name, getattr(self, name))
        self.inductor_passes = checked_passes(
            self.inductor_passes,
            {**self.inductor_compile_config, **self.compile_sizes_inductor_config},
        )
        for name in ("cache_dir", "debug_dump_path"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
            if not isinstance(getattr(self, name), str):
                raise field_error(name, getattr(self, name), "must be a str path")
        check_cache_fields(self)
        if type(self.compile_workers) is not int or self.compile_workers < 0:
            raise field_error(
                "compile_workers",
                self.compile_workers,
                "must be an int >= 0 (0: one per two cores, at most four)",
            )
        for name in (
            "disable_cache",
            "tiered_start",
            "cudagraph_copy_inputs",
            "cudagraph_forbid_capture_after_startup",
            "cudagraph_check_addresses",
        ):
            if not isinstance(getattr(self, name), bool):
                raise field_error(name, getattr(self, name), "must be a bool")
        self.cudagraph_mode = CUDAGraphMode.parse(self.cudagraph_mode)
        if (
            type(self.cudagraph_num_of_warmups) is not int
            or self.cudagraph_num_of_warmups < 0
        ):
            raise field_error(
                "cudagraph_num_of_warmups",
                self.cudagraph_num_of_warmups,
                "must be an int >= 0",
            )
        if self.max_cudagraph_capture_size is not None and (
            type(self.max_cudagraph_capture_size) is not int
            or self.max_cudagraph_capture_size < 1
        ):
            raise field_error(
                "max_cudagraph_capture_size",
                self.max_cudagraph_capture_size,
                "must be a positive int or None",
            )
        if self.cudagraph_capture_sizes is None:
            limit = self.max_cudagraph_capture_size or min(
                512, self.max_num_batched_tokens
            )
            self.cudagraph_capture_sizes = default_capture_sizes(limit)
        else:
            self.cudagraph_capture_sizes = int_list(
                "cudagraph_capture_sizes", self.cudagraph_capture_sizes
            )
        if self.max_cudagraph_capture_size is None:
            self.max_cudagraph_capture_size = (
                max(self.cudagraph_capture_sizes) if self.cudagraph_capture_sizes else 0
            )
        self.cudagraph_capture_sizes = [
            s
            for s in self.cudagraph_capture_sizes
            if s <= self.max_cudagraph_capture_size
        ]
        _validate_cudagraph_fields(self)

    # -- derived -------------------------------------------------------------
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

    def plan_settings(self) -> dict[str, Any]:
        """The fields that decide a CUDA graph plan, as a literal: not in the
        hash (see NOTE: [the config hash covers every field]), so a saved
        forward records and compares them apart."""
        return {
            "cudagraph_mode": self.cudagraph_mode.name,
            "cudagraph_capture_sizes": sorted(self.cudagraph_capture_sizes or ()),
            "max_full_cudagraph_size": self.max_full_cudagraph_size,
            "cudagraph_pad_values": dict(sorted(self.cudagraph_pad_values.items())),
        }

    def compute_hash(self) -> str:
        """Stable hash of every field but those in ``NOT_HASHED``.

        NOTE: [the config hash covers every field]
        A field enters the hash unless ``NOT_HASHED`` names it with the reason
        it changes no compiled code, so a new field is in the cache key from
        the day it is added (tests/test_config.py fails for a field in
        neither).  ``_HASHED_AS`` gives the fields with several spellings of one
        value their canonical form; every other field enters as its ``repr``.
        """
        factors = self.hash_factors()
        return hashlib.sha256(repr(sorted(factors.items())).encode()).hexdigest()

    def hash_factors(self) -> dict[str, Any]:
        """What :meth:`compute_hash` hashes: each hashed field's canonical value,
        by factor name (an entry's factors record keeps their ``repr``)."""
        factors = {}
        for field in dataclasses.fields(self):
            if field.name in NOT_HASHED:
                continue
            key, canonical = _HASHED_AS.get(
                field.name, (field.name, lambda c, n=field.name: getattr(c, n))
            )
            value = canonical(self)
            if value is not _UNHASHED:
                factors[key] = value
        return factors


_UNHASHED = object()  # a canonical form's "leave this field out"

# Fields that change no compiled code, and why (NOTE: [the config hash covers
# every field]).
NOT_HASHED: dict[str, str] = {
    "cache_dir": "where the cache is",
    "disable_cache": "whether the cache is used",
    "cache_url": "where the fleet's shared store is",
    "cache_wait_s": "how long a replica waits for another's compile",
    "cache_lease_s": "how long a compile's lease lasts in the shared store",
    "cache_store_max_bytes": "the shared store's size cap",
    "debug_dump_path": "where debug files go",
    "tiered_start": "when pieces compile, not what they compile to",
    "compile_workers": "how many processes compile, not what",
    # CUDA graphs wrap the compiled pieces at run time; a saved forward records
    # these settings apart (CompilationConfig.plan_settings).
    "cudagraph_mode": "CUDA graphs are a runtime wrapper",
    "cudagraph_capture_sizes": "CUDA graphs are a runtime wrapper",
    "max_cudagraph_capture_size": "CUDA graphs are a runtime wrapper",
    "cudagraph_num_of_warmups": "CUDA graphs are a runtime wrapper",
    "cudagraph_copy_inputs": "CUDA graphs are a runtime wrapper",
    "max_full_cudagraph_size": "CUDA graphs are a runtime wrapper",
    "cudagraph_pad_values": "CUDA graphs are a runtime wrapper",
    "cudagraph_forbid_capture_after_startup": "CUDA graphs are a runtime wrapper",
    "cudagraph_check_addresses": "CUDA graphs are a runtime wrapper",
}

# field -> (factor name, canonical value): one value, one hash, however given.
_HASHED_AS: dict[str, tuple[str, Callable[[CompilationConfig], Any]]] = {
    "splitting_ops": (
        "splitting_ops",
        lambda c: sorted(_op_name(op) for op in c.splitting_ops or ()),
    ),
    "compile_sizes": ("compile_sizes", lambda c: list(c.compile_sizes)),
    # The ranges the split points make, with max_num_batched_tokens.
    "compile_ranges_split_points": ("compile_ranges", lambda c: c.compile_ranges()),
    "inductor_compile_config": (
        "inductor_compile_config",
        lambda c: sorted((k, repr(v)) for k, v in c.inductor_compile_config.items()),
    ),
    # Only when set (as inductor_passes): the configs without it keep their
    # hash, and their cache.
    "compile_sizes_inductor_config": (
        "compile_sizes_inductor_config",
        lambda c: (
            sorted((k, repr(v)) for k, v in c.compile_sizes_inductor_config.items())
            or _UNHASHED
        ),
    ),
    # Only when set: configs without passes keep their hash (and cache).
    "inductor_passes": (
        "inductor_passes",
        lambda c: (
            [pass_uuid(p) for p in c.inductor_passes]
            if c.inductor_passes
            else _UNHASHED
        ),
    ),
}


def _validate_cudagraph_fields(config: CompilationConfig) -> None:
    """The CUDA graph fields that depend on each other.

    Whether compile sizes agree with padding is checked when graphs are actually
    used (``stitch.runtime.cudagraph.padding.check_padding``): on CPU the capture
    sizes play no role.
    """
    limit = config.max_full_cudagraph_size
    if limit is not None and (type(limit) is not int or limit < 1):
        raise field_error(
            "max_full_cudagraph_size", limit, "must be a positive int or None"
        )
    if config.cudagraph_mode is CUDAGraphMode.FULL_AND_PIECEWISE:
        if limit is not None and limit > (config.max_cudagraph_capture_size or 0):
            raise field_error(
                "max_full_cudagraph_size",
                limit,
                f"exceeds max_cudagraph_capture_size={config.max_cudagraph_capture_size}",
            )
    elif limit is not None:
        raise field_error(
            "max_full_cudagraph_size",
            limit,
            "is only used with cudagraph_mode=FULL_AND_PIECEWISE (the mode is "
            f"{config.cudagraph_mode.name})",
        )
    pads = config.cudagraph_pad_values
    if not isinstance(pads, dict) or not all(
        isinstance(k, str) and type(v) in (int, float) for k, v in pads.items()
    ):
        raise field_error(
            "cudagraph_pad_values",
            pads,
            "must map argument names to int or float fill values",
        )


def _op_name(op: Any) -> str:
    return entry_label(op)
