"""``CompilationConfig``: every knob of the backend under vLLM's flat names,
checked on construction; each part reads its own section (``settings.py``)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from stitch.codegen.matching import OpMatcher, entry_label
from stitch.core.errors import StitchConfigError

from .config_fields import (
    check_declared,
    check_full_graph_limit,
    check_inductor_keys,
    check_sizes_fit,
    checked_passes,
    did_you_mean,
    field_error,
    unique_sorted,
)
from .passes.base import pass_uuid
from .settings import (
    DECLARED,
    CacheSettings,
    CompileSettings,
    CUDAGraphMode,
    CUDAGraphSettings,
    SplitSettings,
)

__all__ = [
    "DEFAULT_SPLITTING_OPS",
    "NOT_HASHED",
    "CacheSettings",
    "CompilationConfig",
    "CompileSettings",
    "CUDAGraphMode",
    "CUDAGraphSettings",
    "SplitSettings",
    "default_capture_sizes",
]

# NOTE: [default splitting ops are names]
# Ops are matched by name, so the default needs no op registered: the core
# never imports the models or kernels that define them.  The defaults are the
# attention of each kind of model Stitch knows: the examples' op, the
# transformers integration's op (attn_implementation="stitch", stitch.runtime.hf)
# and PyTorch's own SDPA (transformers' default "sdpa" attention; the name also
# matches the torch function Dynamo keeps for it).  Most models hold only one of
# them, so a default that matches nothing never warns (pipeline/split_warnings.py).
DEFAULT_SPLITTING_OPS = (
    "stitch::attention",
    "stitch::hf_attention",
    "stitch::paged_attention",
    "aten::scaled_dot_product_attention",
)

_Section = TypeVar("_Section", bound=msgspec.Struct)


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
    """Configuration of :class:`stitch.runtime.StitchBackend`, by vLLM's names.

    Each field is declared in one section of ``settings.py`` (its type, bounds,
    and whether it enters :meth:`compute_hash`); each part of Stitch reads its
    section: :attr:`split`, :attr:`compile`, :attr:`cudagraphs`, :attr:`cache`.
    """

    # -- SplitSettings
    splitting_ops: list[Any] | None = None
    # -- CompileSettings
    backend: str = "inductor"
    compile_sizes: list[int] = dataclasses.field(default_factory=list)
    compile_ranges_split_points: list[int] = dataclasses.field(default_factory=list)
    max_num_batched_tokens: int = 8192
    inductor_compile_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    compile_sizes_inductor_config: dict[str, Any] = dataclasses.field(
        default_factory=dict
    )
    inductor_passes: list[Any] = dataclasses.field(default_factory=list)
    tiered_start: bool | None = None
    compile_workers: int = 0
    stitching_source: str = ""
    # -- CacheSettings
    cache_dir: str = ""
    disable_cache: bool = False
    cache_url: str = ""
    cache_wait_s: float = 600.0
    cache_lease_s: float = 30.0
    cache_store_max_bytes: int = 0
    debug_dump_path: str = ""
    # -- CUDAGraphSettings (used on CUDA devices only; nothing happens on CPU)
    cudagraph_mode: Any = CUDAGraphMode.PIECEWISE
    cudagraph_capture_sizes: list[int] | None = None
    max_cudagraph_capture_size: int | None = None
    cudagraph_num_of_warmups: int = 1
    cudagraph_copy_inputs: bool = False
    max_full_cudagraph_size: int | None = None
    cudagraph_pad_values: dict[str, float] = dataclasses.field(default_factory=dict)
    cudagraph_forbid_capture_after_startup: bool = False
    cudagraph_check_addresses: bool = False

    def __post_init__(self) -> None:
        if self.splitting_ops is None:
            self.splitting_ops = list(DEFAULT_SPLITTING_OPS)
        for name in ("cache_dir", "debug_dump_path", "stitching_source"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        self.cudagraph_mode = CUDAGraphMode.parse(self.cudagraph_mode)
        check_declared(self)
        try:
            OpMatcher.parse(self.splitting_ops)
        except ValueError as exc:
            raise field_error("splitting_ops", self.splitting_ops, str(exc)) from None
        self.splitting_ops = list(self.splitting_ops)
        self.compile_sizes = unique_sorted("compile_sizes", self.compile_sizes)
        self.compile_ranges_split_points = unique_sorted(
            "compile_ranges_split_points", self.compile_ranges_split_points
        )
        check_sizes_fit(
            self.compile_sizes,
            self.compile_ranges_split_points,
            self.max_num_batched_tokens,
        )
        for name in ("inductor_compile_config", "compile_sizes_inductor_config"):
            check_inductor_keys(name, getattr(self, name))
        self.inductor_passes = checked_passes(
            self.inductor_passes,
            {**self.inductor_compile_config, **self.compile_sizes_inductor_config},
        )
        self._fill_capture_sizes()
        check_full_graph_limit(
            self.cudagraph_mode,
            self.max_full_cudagraph_size,
            self.max_cudagraph_capture_size or 0,
        )

    def _fill_capture_sizes(self) -> None:
        """vLLM's defaults: capture sizes up to the maximum, the maximum from them."""
        if self.cudagraph_capture_sizes is None:
            limit = self.max_cudagraph_capture_size or min(
                512, self.max_num_batched_tokens
            )
            self.cudagraph_capture_sizes = default_capture_sizes(limit)
        else:
            self.cudagraph_capture_sizes = unique_sorted(
                "cudagraph_capture_sizes", self.cudagraph_capture_sizes
            )
        if self.max_cudagraph_capture_size is None:
            self.max_cudagraph_capture_size = max(self.cudagraph_capture_sizes or [0])
        self.cudagraph_capture_sizes = [
            s
            for s in self.cudagraph_capture_sizes
            if s <= self.max_cudagraph_capture_size
        ]

    # -- each part's section -----------------------------------------------------
    def _section(self, section: type[_Section]) -> _Section:
        # Built from the fields on each read: a field set after construction
        # reaches its section too.
        return section(**{n: getattr(self, n) for n in section.__struct_fields__})

    @property
    def split(self) -> SplitSettings:
        """Where the graph is split (the splitting ops)."""
        return self._section(SplitSettings)

    @property
    def compile(self) -> CompileSettings:
        """How pieces compile: backend, sizes, ranges, options, passes, workers."""
        return self._section(CompileSettings)

    @property
    def cudagraphs(self) -> CUDAGraphSettings:
        """How compiled pieces are captured as CUDA graphs."""
        return self._section(CUDAGraphSettings)

    @property
    def cache(self) -> CacheSettings:
        """Where compiled code is kept: the cache, the fleet's store, the dump."""
        return self._section(CacheSettings)

    # -- derived -------------------------------------------------------------
    def compile_ranges(self) -> list[tuple[int, int]]:
        """Inclusive ``(lo, hi)`` ranges cut from ``[1, max_num_batched_tokens]``."""
        return self.compile.compile_ranges()

    def plan_settings(self) -> dict[str, Any]:
        """The fields that decide a CUDA graph plan, as a literal: not in the
        hash (see NOTE: [the config hash covers every field]), so a saved
        forward records and compares them apart."""
        return self.cudagraphs.plan_settings()

    def compute_hash(self) -> str:
        """Stable hash of every field its declaration puts in the cache key.

        NOTE: [the config hash covers every field]
        A field enters the hash unless its declaration (``settings.py``, NOTE:
        [a field declares its checks and its place in the cache key]) says why
        it changes no compiled code; a field declared nowhere enters it too,
        and tests/test_cache_key.py fails until it is declared.  ``_HASHED_AS``
        gives the fields with several spellings of one value their canonical
        form; every other field enters as its ``repr``.
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

# The fields their declaration keeps out of the key, and why.
NOT_HASHED: dict[str, str] = {
    name: setting.why for name, (_, setting) in DECLARED.items() if not setting.key
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


def _op_name(op: Any) -> str:
    return entry_label(op)
