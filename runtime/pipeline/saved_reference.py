"""The saved reference to a cache entry: the literal that torch's
``aot_compile`` keeps inside a saved forward in place of its graph (a
:class:`~stitch.runtime.store.records.Reference` record), made, checked,
resolved and its constants encoded (``saved_function.py`` loads it)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from stitch.core.errors import StitchCacheError, StitchRuntimeError

from ..compat import python_ast
from ..config import CompilationConfig
from ..cudagraph.graph_plan import GraphPlan
from ..store import codec, location
from ..store.cache import CACHE_ENV
from ..store.digests import file_hash
from ..store.records import Reference, SavedGraphs

WHERE = "a saved Stitch function"
# The fields of CompilationConfig that decide a piece's shape targets.
TARGET_FIELDS = (
    "compile_sizes",
    "compile_ranges_split_points",
    "max_num_batched_tokens",
)
# The fields of CompilationConfig that decide how a saved function's CUDA graphs run.
GRAPH_FIELDS = (
    "cudagraph_mode",
    "cudagraph_capture_sizes",
    "max_cudagraph_capture_size",
    "max_full_cudagraph_size",
    "cudagraph_num_of_warmups",
    "cudagraph_copy_inputs",
    "cudagraph_pad_values",
    "cudagraph_forbid_capture_after_startup",
    "cudagraph_check_addresses",
)


def make_reference(
    config: CompilationConfig,
    entry_dir: str,
    consts: Sequence[Any],
    graphs: GraphPlan | None = None,
) -> dict[str, Any]:
    """The reference to a cache entry (its literal: a :class:`Reference` record);
    raises StitchRuntimeError if a constant cannot be saved."""
    root = location.root_of_entry(entry_dir)
    saved_graphs = None
    if graphs is not None:
        settings = {name: getattr(config, name) for name in GRAPH_FIELDS}
        settings["cudagraph_mode"] = config.cudagraph_mode.name
        saved_graphs = SavedGraphs(settings, graphs.to_record())
    record = Reference(
        cache_root=root,
        entry=location.reference_name(root, entry_dir),
        backend=config.backend,
        targets={name: getattr(config, name) for name in TARGET_FIELDS},
        consts=tuple(encode_const(i, c) for i, c in enumerate(consts)),
        imports=tuple(sorted({type(p).__module__ for p in config.inductor_passes})),
        cudagraphs=saved_graphs,
    )
    return codec.to_literal(record)


def render_reference(reference: dict[str, Any]) -> str:
    """The reference's text, one line (checked first)."""
    return repr(codec.to_literal(checked(reference)))


def parse_reference(text: str) -> dict[str, Any]:
    """The reference in ``text`` (checked: :class:`RecordError` names the field)."""
    return codec.to_literal(codec.decode(Reference, text, WHERE))


def checked(reference: dict[str, Any]) -> Reference:
    """``reference`` as its record (:class:`RecordError` names a bad field)."""
    return codec.decode(Reference, reference, WHERE)


def reference_location(
    reference: dict[str, Any] | Reference, root: str | None = None
) -> tuple[str, str]:
    """The cache root and entry directory; ``root`` (else ``$STITCH_CACHE_DIR``,
    else the saved root).  ``reference``: its literal, or the record checked."""
    record = reference if isinstance(reference, Reference) else checked(reference)
    root = os.path.abspath(
        os.path.expanduser(root or os.environ.get(CACHE_ENV) or record.cache_root)
    )
    return root, location.reference_entry(root, record.entry)


def reference_entry(
    reference: dict[str, Any] | Reference, root: str | None = None
) -> str:
    """The entry directory of a saved reference."""
    return reference_location(reference, root)[1]


def index_sha256(entry_dir: str) -> str:
    try:
        return file_hash(location.index_file(entry_dir))
    except OSError as exc:
        raise StitchCacheError(
            f"cache entry {entry_dir} has no readable index ({exc})"
        ) from None


def encode_const(i: int, value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    try:
        text = repr(value)
        back = python_ast.literal_eval(text)
        if back == value and type(back) is type(value):
            return {"literal": text}
    except (SyntaxError, ValueError, TypeError, RecursionError):
        pass
    raise StitchRuntimeError(
        f"constant {i} of the stitching source ({type(value).__name__}) cannot be saved"
    )


def decode_const(value: Any) -> Any:
    if not isinstance(value, dict) or len(value) != 1:
        raise StitchCacheError(f"a saved constant is malformed ({value!r})")
    ((kind, text),) = value.items()
    if kind == "dtype":
        dtype = getattr(torch, str(text), None)
        if not isinstance(dtype, torch.dtype):
            raise StitchCacheError(f"a saved constant names dtype {text!r}")
        return dtype
    if kind == "device":
        return torch.device(text)
    if kind == "literal":
        return python_ast.literal_eval(text)
    raise StitchCacheError(f"a saved constant has kind {kind!r}")
