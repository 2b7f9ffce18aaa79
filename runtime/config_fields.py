"""The checks of :class:`CompilationConfig`'s fields that need more than a line:
each error names the field and its value (``CompilationConfig.<name>=<value>: why``)."""

from __future__ import annotations

import difflib
from typing import Any

from stitch.core.errors import StitchConfigError

from .passes.base import pass_name, pass_uuid

# The URL schemes of cache_url a shared store exists for (store/shared/).
SHARED_SCHEMES = ("redis://", "rediss://", "unix://")


def field_error(name: str, value: Any, why: str) -> StitchConfigError:
    return StitchConfigError(f"CompilationConfig.{name}={value!r}: {why}")


def int_list(name: str, value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)):
        raise field_error(name, value, "must be a list of positive ints")
    for v in value:
        if type(v) is not int or v < 1:
            raise field_error(name, value, f"entry {v!r} is not a positive int")
    if len(set(value)) != len(value):
        raise field_error(name, value, "has duplicate entries")
    return sorted(value)


def did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_inductor_keys(name: str, patches: Any) -> None:
    """``patches`` (the field ``name``) maps Inductor config options to values;
    checked now, not at the first compile."""
    if not isinstance(patches, dict) or not all(isinstance(k, str) for k in patches):
        raise field_error(
            name, patches, "must be a dict of Inductor config names to values"
        )
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


def checked_passes(value: Any, inductor_config: dict[str, Any]) -> list[Any]:
    """``inductor_passes``, checked: a list of callables with a string ``uuid()``."""
    if not isinstance(value, (list, tuple)):
        raise field_error(
            "inductor_passes",
            value,
            "must be a list of passes (fx.Graph callables with uuid())",
        )
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


def check_cache_fields(config: Any) -> None:
    """A ``CompilationConfig``'s shared-store fields: URL, waits, size cap."""
    url = config.cache_url
    if not isinstance(url, str) or (url and not url.startswith(SHARED_SCHEMES)):
        raise field_error(
            "cache_url",
            url,
            f"must be a URL starting with one of {SHARED_SCHEMES}, or ''",
        )
    for name in ("cache_wait_s", "cache_lease_s"):
        value = getattr(config, name)
        if type(value) not in (int, float) or not value > 0:
            raise field_error(name, value, "must be a number of seconds > 0")
    cap = config.cache_store_max_bytes
    if type(cap) is not int or cap < 0:
        raise field_error(
            "cache_store_max_bytes", cap, "must be an int >= 0 (0: no cap)"
        )
