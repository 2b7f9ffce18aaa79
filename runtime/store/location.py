"""Where a cache entry lives: the cache root, the entry key, the rank folder."""

from __future__ import annotations

import hashlib
import os

import torch
from platformdirs import user_cache_dir

from stitch.core.contract import FORMAT_VERSION

from ..config import CompilationConfig
from .index import INDEX_FORMAT, EntryIdentity

CACHE_ENV = "STITCH_CACHE_DIR"


def stitch_version() -> str:
    """The code that writes an entry: the package version and the format of the
    emitted source, so source emitted by an older code generator is not reused."""
    try:
        from importlib.metadata import version

        package = version("stitch")
    except Exception:  # noqa: BLE001 - running from a checkout without metadata
        package = "0+unknown"
    return f"{package}/emitted-format-{FORMAT_VERSION}"


def cache_root(config: CompilationConfig) -> str:
    """``config.cache_dir``, else ``$STITCH_CACHE_DIR``, else the user cache dir
    (``platformdirs``: ``$XDG_CACHE_HOME/stitch`` or ``~/.cache/stitch`` on Linux)."""
    if config.cache_dir:
        return os.path.abspath(os.path.expanduser(config.cache_dir))
    if os.environ.get(CACHE_ENV):
        return os.path.abspath(os.path.expanduser(os.environ[CACHE_ENV]))
    return user_cache_dir("stitch", appauthor=False)


def current_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


# NOTE: [ranks of one engine share a folder]
# An entry's folder is ``<root>/<entry key>/rank_<r>``.  By default the key
# covers the graph, so one graph's ranks share it.  The ranks of a tensor-
# parallel engine trace different graphs (each holds its own shard's sizes and
# offsets, such as a vocabulary-parallel embedding's first token id), which
# would put each rank's entry under a folder of its own.  An integration that
# knows what its ranks share (vLLM: the engine config's hash and the compiled
# module) names it as the entry's ``group``: the key then covers the group
# instead of the graph, so one model's cache is one folder with ``rank_<r>``
# below it, and each rank's index still records, and is checked against, its
# own graph key.


def entry_key(identity: EntryIdentity) -> str:
    """The folder name of the entry for ``identity`` (what its index must say)."""
    factors: tuple[object, ...] = (
        identity.config_hash,
        identity.torch_version,
        identity.group or identity.graph_key,
        identity.stitch_version,
        identity.backend,
        INDEX_FORMAT,
    )
    if identity.group:
        factors += ("group",)
    return hashlib.sha256(repr(factors).encode()).hexdigest()[:20]
