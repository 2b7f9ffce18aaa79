"""The cache index (``index.py``): its schema, read and written in this one place.

The index is a Python literal (read with ``ast.literal_eval``) describing one
cache entry::

    {"format": 1, "stitch_version": ..., "torch_version": ..., "config_hash": ...,
     "graph_key": ..., "backend": ...,
     "source": {"file": "execution_fn.py", "sha256": ..., "submod_names": [...],
                "dispatch_on": <placeholder name or None>},
     "pieces": {<piece name>: {"module_path": ..., "sym_index": <int or None>,
                               "entries": [{"target": "general" | "size8" | ...,
                                            "key": ..., "artifact": ...,
                                            "sha256": ..., "unwrap": bool,
                                            "range": [lo, hi]}, ...]}}}
"""

from __future__ import annotations

import ast
import pprint
from collections.abc import Sequence
from typing import Any

import torch

from stitch.codegen.errors import StitchCacheError

from ..config import CompilationConfig
from ..targets import Target, targets_for

INDEX_FILE = "index.py"
INDEX_FORMAT = 1


def parse_index(text: str) -> dict[str, Any]:
    """The index's data; raises :class:`StitchCacheError` when it is not an index."""
    try:
        data = ast.literal_eval(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise StitchCacheError(f"not a literal ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise StitchCacheError("not a dict")
    if data.get("format") != INDEX_FORMAT:
        raise StitchCacheError(f"unknown index format {data.get('format')!r}")
    if not isinstance(data.get("pieces"), dict):
        raise StitchCacheError("no 'pieces' table")
    return data


def render_index(data: dict[str, Any]) -> str:
    text = (
        "# Stitch compile cache index: a Python literal (ast.literal_eval).\n"
        + pprint.pformat(data, sort_dicts=True, width=100)
        + "\n"
    )
    ast.literal_eval(text)  # never write what we could not read back
    return text


def build_index(
    *,
    stitch_version: str,
    config_hash: str,
    graph_key: str,
    backend: str,
    source_file: str,
    source_sha256: str,
    submod_names: Sequence[str],
    dispatch_on: str | None,
    pieces: dict[str, Any],
) -> dict[str, Any]:
    return {
        "format": INDEX_FORMAT,
        "stitch_version": stitch_version,
        "torch_version": torch.__version__,
        "config_hash": config_hash,
        "graph_key": graph_key,
        "backend": backend,
        "source": {
            "file": source_file,
            "sha256": source_sha256,
            "submod_names": list(submod_names),
            "dispatch_on": dispatch_on,
        },
        "pieces": pieces,
    }


def piece_record(
    module_path: str, size_argument: int | None, entries: list[dict[str, Any]]
) -> dict[str, Any]:
    return {"module_path": module_path, "sym_index": size_argument, "entries": entries}


def entry_record(target: Target) -> dict[str, Any]:
    """A piece's entry for one target, before its key and artifact are known."""
    entry: dict[str, Any] = {"target": target.key()}
    if target.kind != "general":
        entry["range"] = [target.lo, target.hi]
    return entry


def plan_from_record(
    record: Any, config: CompilationConfig
) -> tuple[int | None, list[Target], list[str]] | None:
    """Size argument, targets and keys recorded for a piece, if usable as they are."""
    if not isinstance(record, dict) or "sym_index" not in record:
        return None
    size_argument = record["sym_index"]
    if size_argument is not None and type(size_argument) is not int:
        return None
    possible = {
        t.key(): t
        for t in targets_for(
            config.compile_sizes, config.compile_ranges(), size_argument is not None
        )
    }
    targets: list[Target] = []
    keys: list[str] = []
    entries = record.get("entries", [])
    if not isinstance(entries, list):
        return None
    for e in entries:
        if not isinstance(e, dict) or e.get("target") not in possible:
            return None
        if not isinstance(e.get("key"), str) or not e["key"]:
            return None
        targets.append(possible[e["target"]])
        keys.append(e["key"])
    if Target("general") not in targets:
        return None
    return size_argument, targets, keys


def entries_by_target(record: Any) -> dict[str, dict[str, Any]]:
    """A piece record's entries by target key (malformed entries are left out)."""
    if not isinstance(record, dict) or not isinstance(record.get("entries"), list):
        return {}
    return {
        e["target"]: e
        for e in record["entries"]
        if isinstance(e, dict) and isinstance(e.get("target"), str)
    }
