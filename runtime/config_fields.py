"""The checks of :class:`CompilationConfig`'s fields: the declared ones through
msgspec (``settings.py``), the rest (one field against another, Inductor's option
names, passes) as small named functions.  Each error names the field and its
value (``CompilationConfig.<name>=<value>: why``)."""

from __future__ import annotations

import difflib
import enum
import re
from typing import Any

import msgspec

from stitch.core.errors import StitchConfigError

from .passes.base import pass_name, pass_uuid
from .settings import DECLARED, CUDAGraphMode

__all__ = [
    "check_declared",
    "check_full_graph_limit",
    "check_inductor_keys",
    "check_sizes_fit",
    "checked_passes",
    "did_you_mean",
    "field_error",
    "unique_sorted",
]

# msgspec's "... - at `$.name[3]`" (or "at `key` in `$.name`").
_WHERE = re.compile(r"`\$\.(\w+)(?:\[(\d+)\])?")


def field_error(name: str, value: Any, why: str) -> StitchConfigError:
    return StitchConfigError(f"CompilationConfig.{name}={value!r}: {why}")


def did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_declared(config: Any) -> None:
    """Every section's declared types and bounds, checked by ``msgspec.convert``;
    the first field refused is named with its value and what it must be."""
    sections: dict[type, dict[str, Any]] = {}
    for name, (section, _) in DECLARED.items():
        value = getattr(config, name)
        # msgspec takes an enum by its value (the mode was parsed already).
        plain = value.value if isinstance(value, enum.Enum) else value
        sections.setdefault(section, {})[name] = plain
    for section, values in sections.items():
        try:
            msgspec.convert(values, section)
        except msgspec.ValidationError as exc:
            raise _refused(exc, values) from None


def _refused(exc: msgspec.ValidationError, values: dict[str, Any]) -> Exception:
    where = _WHERE.search(str(exc))
    if where is None or where[1] not in values:  # not expected: say msgspec's words
        return StitchConfigError(f"CompilationConfig: {exc}")
    name, value = where[1], values[where[1]]
    setting = DECLARED[name][1]
    if where[2] is not None and setting.entry:
        entry = value[int(where[2])]
        return field_error(name, value, f"entry {entry!r} is not {setting.entry}")
    return field_error(name, value, f"must be {setting.must}")


def unique_sorted(name: str, value: Any) -> list[int]:
    """A list of sizes (types checked already), without repeats, sorted."""
    if len(set(value)) != len(value):
        raise field_error(name, value, "has duplicate entries")
    return sorted(value)


def check_sizes_fit(sizes: list[int], points: list[int], max_tokens: int) -> None:
    """Compile sizes and range split points lie within ``max_num_batched_tokens``."""
    for size in sizes:
        if size > max_tokens:
            raise field_error(
                "compile_sizes",
                sizes,
                f"size {size} exceeds max_num_batched_tokens={max_tokens}",
            )
    for p in points:
        if p >= max_tokens:
            raise field_error(
                "compile_ranges_split_points",
                points,
                f"split point {p} must be below max_num_batched_tokens={max_tokens}",
            )


def check_inductor_keys(name: str, patches: dict[str, Any]) -> None:
    """``patches`` (the field ``name``) maps Inductor config options to values;
    each name is checked now, not at the first compile."""
    if not patches:
        return  # importing Inductor's config costs seconds: only when there is a key
    from .compat.inductor import config_options

    known = config_options()
    for key in patches:
        if key not in known:
            raise field_error(
                name,
                patches,
                f"{key!r} is not an option of torch._inductor.config"
                + did_you_mean(key, known),
            )


def checked_passes(value: list[Any], inductor_config: dict[str, Any]) -> list[Any]:
    """``inductor_passes``, checked: callables with a string ``uuid()``, and no
    Inductor option that would take their hook."""
    for p in value:
        if not callable(p):
            raise field_error(
                "inductor_passes", value, f"{pass_name(p)} is not callable"
            )
        try:
            pass_uuid(p)
        except TypeError as exc:
            raise field_error("inductor_passes", value, str(exc)) from None
    if value and "post_grad_custom_post_pass" in inductor_config:
        raise field_error(
            "inductor_passes",
            value,
            "cannot be combined with an Inductor option 'post_grad_custom_post_pass' "
            "(Stitch runs the passes through that hook); add that pass to inductor_passes",
        )
    return list(value)


def check_full_graph_limit(
    mode: CUDAGraphMode, limit: int | None, max_capture: int
) -> None:
    """``max_full_cudagraph_size``: only with FULL_AND_PIECEWISE, within the
    capture sizes.  Whether compile sizes agree with padding is checked when
    graphs are used (``cudagraph.padding.check_padding``)."""
    if limit is None:
        return
    if mode is not CUDAGraphMode.FULL_AND_PIECEWISE:
        raise field_error(
            "max_full_cudagraph_size",
            limit,
            "is only used with cudagraph_mode=FULL_AND_PIECEWISE (the mode is "
            f"{mode.name})",
        )
    if limit > max_capture:
        raise field_error(
            "max_full_cudagraph_size",
            limit,
            f"exceeds max_cudagraph_capture_size={max_capture}",
        )
