"""The Stitch ``CompilationConfig`` a vLLM engine gets: vLLM's defaults, then the user's fields.

NOTE: [how a vLLM user passes Stitch fields]
vLLM names a backend by a string (a qualified name, or a torch backend name) and
rebuilds its config in every worker process it spawns, so a backend object
built in the user's script never reaches the worker that compiles.  What does
reach it is the environment: ``$STITCH_VLLM_CONFIG`` holds a JSON object of
``CompilationConfig`` fields (``'{"compile_sizes": [1, 8]}'``), read in the
worker when the backend is called.  A module of the user's own that the
workers can import may instead hold ``backend_with(**fields)`` and be named by
its qualified name; both routes meet in :func:`stitch_config`.  Fields given
there win over vLLM's defaults; a name that is no field of ``CompilationConfig``
is one warning naming it (and the close name meant), and is left out, since
the engine is better served running with the defaults than failing to start.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
from typing import Any

from stitch.core.errors import StitchConfigError

from ..config import CompilationConfig
from ..store.location import CACHE_ENV

log = logging.getLogger("stitch")

CONFIG_ENV = "STITCH_VLLM_CONFIG"

# NOTE: [vLLM's splitting ops are its attention and mixer ops]
# CompilationConfig._attention_ops in vLLM lists every op its piecewise mode
# splits at (attention of each kind, Mamba mixers, short convolutions, linear
# attention).  A model holds one or two of them, so these defaults never warn
# one by one when they match nothing (pipeline/split_warnings.py); an op the user names does.
FALLBACK_SPLITTING_OPS = (
    "vllm::unified_attention_with_output",
    "vllm::unified_mla_attention_with_output",
    "vllm::mamba_mixer2",
    "vllm::mamba_mixer",
    "vllm::short_conv",
    "vllm::linear_attention",
)


def vllm_splitting_ops(vllm_config: Any = None) -> list[str]:
    """vLLM's own list (the installed version's), else a copy of 0.32's main entries."""
    cls = type(getattr(vllm_config, "compilation_config", None))
    ops = getattr(cls, "_attention_ops", None)
    if not ops:
        try:
            from vllm.config import CompilationConfig as VllmCompilationConfig

            ops = VllmCompilationConfig._attention_ops
        except (ImportError, AttributeError):
            ops = FALLBACK_SPLITTING_OPS
    return list(ops)


def stitch_cache_root() -> str:
    """``$STITCH_CACHE_DIR``, else ``<vLLM's cache root>/stitch``."""
    if os.environ.get(CACHE_ENV):
        return os.path.abspath(os.path.expanduser(os.environ[CACHE_ENV]))
    try:
        import vllm.envs as envs

        root = envs.VLLM_CACHE_ROOT
    except ImportError:
        root = os.path.join(os.path.expanduser("~"), ".cache", "vllm")
    return os.path.join(os.path.abspath(os.path.expanduser(root)), "stitch")


def env_fields() -> dict[str, Any]:
    """The fields in ``$STITCH_VLLM_CONFIG`` (a JSON object); malformed text is an error."""
    text = os.environ.get(CONFIG_ENV, "").strip()
    if not text:
        return {}
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StitchConfigError(
            f"${CONFIG_ENV}={text!r} is not JSON ({exc}); give an object of "
            "CompilationConfig fields, e.g. '{\"compile_sizes\": [1, 8]}'"
        ) from None
    if not isinstance(fields, dict):
        raise StitchConfigError(
            f"${CONFIG_ENV}={text!r} is not a JSON object of CompilationConfig fields"
        )
    return fields


# The (source, name, value) triples already warned of: the config is built
# where the backend is made and again at each of its calls, and the user
# should read of a misspelt field once per process, not once per build.
_warned: set[tuple[str, str, str]] = set()


def known_fields(fields: dict[str, Any], source: str) -> dict[str, Any]:
    """``fields`` less the names ``CompilationConfig`` lacks (one warning each,
    once per process)."""
    names = [f.name for f in dataclasses.fields(CompilationConfig)]
    kept = {}
    for name, value in fields.items():
        if name in names:
            kept[name] = value
            continue
        if (source, str(name), repr(value)) in _warned:
            continue
        _warned.add((source, str(name), repr(value)))
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        log.warning(
            "stitch: %s names %r=%r, which is no field of CompilationConfig, so it "
            "is ignored%s",
            source,
            name,
            value,
            hint,
        )
    return kept


# NOTE: [the Inductor options vLLM compiles with on CPU]
# vLLM's CPU platform (vllm/platforms/cpu.py, check_and_update_config) turns its
# own compile into a whole-graph Inductor compile with these options; a user
# who names another backend in mode 2 does not get them.  Stitch's pieces take
# the same, so per-token costs compare like with like: without them every
# piece checks each input's size and stride on every call (size_asserts), which
# a whole graph does once.
CPU_INDUCTOR_OPTIONS = {
    "dce": True,
    "size_asserts": False,
    "nan_asserts": False,
    "epilogue_fusion": True,
    "cpp.dynamic_threads": True,
}


def _on_cpu(vllm_config: Any) -> bool:
    device = getattr(getattr(vllm_config, "device_config", None), "device_type", None)
    if device is not None:
        return str(device) == "cpu"
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except ImportError:
        return False


def inductor_options(vllm_config: Any) -> dict[str, Any]:
    """vLLM's ``inductor_compile_config`` (the options Inductor knows), plus its
    CPU options on CPU."""
    compilation = getattr(vllm_config, "compilation_config", None)
    options = dict(getattr(compilation, "inductor_compile_config", None) or {})
    if _on_cpu(vllm_config):
        options.update(CPU_INDUCTOR_OPTIONS)
    if not options:
        return {}
    from stitch.runtime.compat.inductor import config_options

    known = config_options()
    for key in sorted(set(options) - set(known)):
        log.info("stitch: vLLM's Inductor option %r is unknown to Inductor", key)
    return {k: v for k, v in options.items() if k in known}


def static_size_options() -> dict[str, Any]:
    """What vLLM's Inductor adaptor turns on for a compile of one size
    (``set_inductor_config``): max_autotune and coordinate_descent_tuning, each
    unless its environment variable is 0 (read as vLLM reads it)."""
    options = {}
    for option, variable in (
        ("max_autotune", "VLLM_ENABLE_INDUCTOR_MAX_AUTOTUNE"),
        ("coordinate_descent_tuning", "VLLM_ENABLE_INDUCTOR_COORDINATE_DESCENT_TUNING"),
    ):
        raw = os.environ.get(variable, "1")
        try:
            options[option] = bool(int(raw))
        except ValueError:
            raise StitchConfigError(
                f"${variable}={raw!r}: must be an integer (0 turns {option} off "
                "for compile_sizes)"
            ) from None
    return options


def vllm_defaults(vllm_config: Any) -> dict[str, Any]:
    """The fields vLLM's own config decides."""
    compilation = getattr(vllm_config, "compilation_config", None)
    scheduler = getattr(vllm_config, "scheduler_config", None)
    defaults: dict[str, Any] = {
        # An explicit, non-empty list in vLLM's config is the user's choice.
        "splitting_ops": list(getattr(compilation, "splitting_ops", None) or [])
        or vllm_splitting_ops(vllm_config),
        "cache_dir": stitch_cache_root(),
        "inductor_compile_config": inductor_options(vllm_config),
        # Used only when compile_sizes names sizes (NOTE: [options of one size]).
        "compile_sizes_inductor_config": static_size_options(),
    }
    tokens = getattr(scheduler, "max_num_batched_tokens", None)
    if type(tokens) is int and tokens >= 1:
        defaults["max_num_batched_tokens"] = tokens
    return defaults


def stitch_config(
    vllm_config: Any, fields: dict[str, Any] | None = None
) -> CompilationConfig:
    """vLLM's defaults, then ``$STITCH_VLLM_CONFIG``, then ``fields`` (later wins)."""
    values = vllm_defaults(vllm_config)
    values.update(known_fields(env_fields(), f"${CONFIG_ENV}"))
    values.update(known_fields(dict(fields or {}), "backend_with()"))
    return CompilationConfig(**values)
