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


def entry_key(identity: EntryIdentity) -> str:
    """The folder name of the entry for ``identity`` (what its index must say)."""
    factors = (
        identity.config_hash,
        identity.torch_version,
        identity.graph_key,
        identity.stitch_version,
        identity.backend,
        INDEX_FORMAT,
    )
    return hashlib.sha256(repr(factors).encode()).hexdigest()[:20]
