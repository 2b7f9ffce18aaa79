"""The record of an AOT-compiled forward: where it lives, what it is valid for, reading and writing it.

A record lives at ``<cache root>/aot/<model key>/rank_<r>/`` and is keyed by the
model's class and structure (module types, weight shapes and dtypes, plain
attributes): what a warm process can compute before tracing anything.  What
the saved forward depends on beyond that (torch, Python and Stitch versions,
the config hash and CUDA graph settings, the inputs' dtypes, ranks and dynamic
dims, the source files Dynamo traced) is stored in the record and compared on load; any difference is
a reason the record is stale (see NOTE: [warm start without Dynamo] in aot.py).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from stitch.core.errors import StitchCacheError, StitchRuntimeError

from ..compat import python_ast
from ..compat.dynamo import marked_dims
from ..config import CompilationConfig
from ..store import codec, location
from ..store.cache import current_rank, stitch_version
from ..store.digests import content_hash, file_hash_or_none, key_hash
from ..store.files import atomic_write, make_private_dirs
from ..store.location import AOT_RECORD_FILE
from ..store.records import AOTRecord, aot_record
from ..store.trust import check_trusted

RECORD_FILE = AOT_RECORD_FILE


class StaleRecord(Exception):
    """The saved function does not fit this process; the reasons, for one warning."""


def record_folder(model: torch.nn.Module, root: str) -> str:
    """``<root>/aot/<model key>/rank_<r>``: one record per model class and structure."""
    key = key_hash(model_name(model), model_structure(model))
    return location.aot_folder(root, key, current_rank())


def model_name(model: torch.nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def model_structure(model: torch.nn.Module) -> list[Any]:
    """Module types, parameter/buffer metadata and plain attributes, in module order.

    What Dynamo bakes into the graph from the module tree besides code: shapes
    and dtypes of the weights, and scalar attributes (sizes, eps, flags).
    """
    out: list[Any] = []
    for name, module in model.named_modules():
        out.append((name, f"{type(module).__module__}.{type(module).__qualname__}"))
        for kind, tensors in (("p", module._parameters), ("b", module._buffers)):
            for tname, t in tensors.items():
                if t is not None:
                    out.append(
                        (kind, tname, tuple(t.shape), str(t.dtype), t.device.type)
                    )
        for attr, value in sorted(vars(module).items()):
            if not attr.startswith("_") and attr != "training":
                plain = _plain(value)
                if plain is not None:
                    out.append(("a", attr, plain))
    return out


def _plain(value: Any) -> str | None:
    if value is None or isinstance(
        value, (bool, int, float, str, enum.Enum, torch.dtype)
    ):
        return repr(value)
    if isinstance(value, tuple) and all(_plain(v) is not None for v in value):
        return repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return repr(value)
    return None


def dynamic_spec(
    args: Sequence[Any], requested: Mapping[int, Sequence[int]]
) -> list[list[int]]:
    """Per input, its dynamic dims: requested, or marked on the tensor (mark_dynamic/unbacked)."""
    dims = []
    for i, a in enumerate(args):
        marked = set(requested.get(i, ()))
        if isinstance(a, torch.Tensor):
            marked |= marked_dims(a)
            bad = [d for d in marked if not -a.dim() <= d < a.dim()]
            if bad:
                raise StitchRuntimeError(
                    f"input {i} has no dimension {bad[0]} (rank {a.dim()})"
                )
            marked = {d % a.dim() for d in marked}
        elif marked:
            raise StitchRuntimeError(
                f"input {i} is a {type(a).__name__}, not a tensor with dims"
            )
        dims.append(sorted(marked))
    return dims


def input_spec(args: Sequence[Any], dims: Sequence[Sequence[int]]) -> list[Any]:
    """Dtype, rank, device and dynamic dims of each tensor input; the type of others."""
    spec: list[Any] = []
    for a, dyn in zip(args, dims, strict=False):
        if isinstance(a, torch.Tensor):
            spec.append(
                (
                    "tensor",
                    str(a.dtype).removeprefix("torch."),
                    a.dim(),
                    a.device.type,
                    dyn,
                )
            )
        elif a is None or isinstance(a, (bool, str)):
            spec.append((type(a).__name__, repr(a)))
        else:
            spec.append((type(a).__name__,))
    return spec


def factors(
    config: CompilationConfig,
    args: Sequence[Any],
    dims: Sequence[Sequence[int]],
    names: Mapping[tuple[int, int], str] | None = None,
) -> dict[str, Any]:
    # Keyword arguments (arguments.py) by name; a positional call's factors
    # are as they were before keywords, and a call without named sizes
    # (NOTE: [one size for dims of one name]) as before them.
    keywords = list(getattr(args, "keywords", ()))
    sizes = sorted([p, d, n] for (p, d), n in (names or {}).items())
    return {
        **({"keywords": keywords} if keywords else {}),
        **({"sizes": sizes} if sizes else {}),
        "torch": torch.__version__,
        "python": sys.implementation.cache_tag,
        "stitch": stitch_version(),
        "config_hash": config.compute_hash(),
        # Not in the config hash (they change no compiled code), but in the saved
        # function: the CUDA graphs it wraps its pieces in.
        "cudagraphs": config.plan_settings(),
        "inputs": input_spec(args, dims),
    }


FACTOR_NAMES = {
    "torch": "torch version",
    "python": "Python version",
    "stitch": "Stitch version",
    "config_hash": "config hash",
    "cudagraphs": "CUDA graph settings",
    "inputs": "input dtypes/ranks/dynamic dims",
    "keywords": "keyword arguments",
    "sizes": "dims of one size",
}


def stale_reasons(record: AOTRecord, now: dict[str, Any]) -> list[str]:
    """Why ``record`` does not hold for a process whose :func:`factors` are ``now``."""
    reasons = []
    saved = record.factors
    for name in ("keywords", "sizes"):
        if name in saved and name not in now:
            reasons.append(f"{FACTOR_NAMES[name]} {_short(saved[name])} -> none")
    for name, value in now.items():
        old = saved.get(name)
        if old == literal(value):
            continue
        if isinstance(old, dict) and isinstance(value, dict):
            changed = [k for k in sorted(value) if old.get(k) != literal(value[k])]
            reasons.append(
                f"{FACTOR_NAMES[name]} "
                + ", ".join(
                    f"{k} {_short(old.get(k))} -> {_short(value[k])}" for k in changed
                )
            )
        else:
            reasons.append(f"{FACTOR_NAMES[name]} {_short(old)} -> {_short(value)}")
    for module, saved_path, sha in record.code:
        # The module's file here (a shipped cache may find the code elsewhere).
        path = module_file(module) or saved_path
        if file_hash_or_none(path) != sha:
            reasons.append(f"model code changed ({module}: {path})")
    return reasons


def module_file(name: str) -> str | None:
    """The source file of module ``name``, without importing it if it is not imported."""
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if path is None and module is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        path = spec.origin if spec is not None else None
    return os.path.abspath(path) if isinstance(path, str) else None


def literal(value: Any) -> Any:
    return python_ast.literal_eval(repr(value))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:16] + "…"


def traced_code(sources: Any) -> list[tuple[str, str, str | None]]:
    """``(module, file, sha256)`` of each source file Dynamo traced, torch's own left out."""
    out = set()
    for source in sources:
        name = getattr(source, "module", None)
        if not isinstance(name, str) or name == "torch" or name.startswith("torch."):
            continue
        path = module_file(name)
        if path is not None:
            out.add((name, path, file_hash_or_none(path)))
    return sorted(out)


# -- the record on disk -------------------------------------------------------------------


def write_record(folder: str, record: dict[str, Any], files: dict[str, bytes]) -> None:
    """Write the side files, then the record (its presence commits them).

    Folders are created 0700 and files 0600, as everywhere in the cache: the
    bytecode is code this user will run (see docs/cache.md, trust model).
    """
    path = location.aot_record_file(folder)
    data = codec.encode(aot_record(record, path))  # checked before anything is written
    make_private_dirs(folder, location.root_of_aot(folder))
    for name, content in files.items():
        atomic_write(location.aot_side_file(folder, name), content)
    atomic_write(path, data)


def read_record(folder: str) -> AOTRecord | None:
    """The record in ``folder`` (None: there is none), every field loading reads
    checked (``store/records.py``: a damaged record is a ``RecordError`` naming
    the file and the field, never a KeyError deep in the load); raises
    ``StitchCacheTrustError`` when someone else could have written it."""
    path = location.aot_record_file(folder)
    check_trusted(path, location.root_of_aot(folder))
    try:
        return codec.read(AOTRecord, path)
    except FileNotFoundError:
        return None


def read_file(folder: str, name: str, sha256: Any) -> bytes:
    """A side file of the record, trust-checked, its bytes matching ``sha256``."""
    path = location.aot_side_file(folder, name)
    check_trusted(path, location.root_of_aot(folder))
    with open(path, "rb") as f:
        data = f.read()
    if content_hash(data) != sha256:
        raise StitchCacheError(f"{path} does not match its sha256")
    return data
