"""The persistent compile cache: per-rank directories, a literal index, atomic writes.

Layout of one entry (``<root>/<key>/rank_<r>/``)::

    index.py            # a Python literal (read with ast.literal_eval)
    execution_fn.py     # the emitted stitching source, exactly what runs
    artifacts/<k>.bin   # compiled pieces, content-addressed by compile key

Anything wrong in an entry is logged as one warning naming the file and that
entry is rebuilt; it never fails the user's run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import torch

from stitch.codegen.errors import StitchCacheError

from ..config import CompilationConfig
from ..counter import compilation_counter
from .files import atomic_write, sha256_file
from .index import INDEX_FILE, parse_index, render_index

log = logging.getLogger("stitch")

SOURCE_FILE = "execution_fn.py"
ARTIFACTS_DIR = "artifacts"
CACHE_ENV = "STITCH_CACHE_DIR"


def stitch_version() -> str:
    try:
        from importlib.metadata import version

        return version("stitch")
    except Exception:  # noqa: BLE001 - running from a checkout without metadata
        return "0+unknown"


def cache_root(config: CompilationConfig) -> str:
    """``config.cache_dir``, else ``$STITCH_CACHE_DIR``, else the user cache dir."""
    if config.cache_dir:
        return os.path.abspath(os.path.expanduser(config.cache_dir))
    if os.environ.get(CACHE_ENV):
        return os.path.abspath(os.path.expanduser(os.environ[CACHE_ENV]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "stitch")


def current_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def entry_key(config: CompilationConfig, graph_key: str) -> str:
    factors = (config.compute_hash(), torch.__version__, graph_key, stitch_version())
    return hashlib.sha256(repr(factors).encode()).hexdigest()[:20]


class CompileCache:
    """One cache entry directory (already per rank)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    @classmethod
    def for_graph(cls, config: CompilationConfig, graph_key: str) -> CompileCache:
        key = entry_key(config, graph_key)
        return cls(os.path.join(cache_root(config), key, f"rank_{current_rank()}"))

    def path(self, relative: str) -> str:
        return os.path.join(self.directory, relative)

    def artifact_relpath(self, compile_key: str) -> str:
        return f"{ARTIFACTS_DIR}/{compile_key}.bin"

    # -- reading --------------------------------------------------------------
    def read_index(self) -> dict[str, Any] | None:
        path = self.path(INDEX_FILE)
        if not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                return parse_index(f.read())
        except (OSError, UnicodeDecodeError, StitchCacheError) as exc:
            self.fault(path, f"index is unreadable ({type(exc).__name__}: {exc})")
            return None

    def verified(self, relative: Any, sha: Any) -> str | None:
        """Absolute path of ``relative`` if it exists and matches ``sha``."""
        if not isinstance(relative, str) or not isinstance(sha, str):
            self.fault(self.path(INDEX_FILE), f"malformed file record {relative!r}")
            return None
        if os.path.isabs(relative) or ".." in relative.split("/"):
            self.fault(self.path(INDEX_FILE), f"file record {relative!r} leaves the cache")
            return None
        path = self.path(relative)
        if not os.path.exists(path):
            self.fault(path, "is missing")
            return None
        actual = sha256_file(path)
        if actual != sha:
            self.fault(path, f"sha256 {actual[:12]}… does not match the index ({sha[:12]}…)")
            return None
        return path

    def fault(self, path: str, why: str) -> None:
        compilation_counter.num_cache_faults += 1
        log.warning("stitch cache: %s %s; rebuilding that entry", path, why)

    # -- writing --------------------------------------------------------------
    def write_text(self, relative: str, text: str) -> str:
        data = text.encode("utf-8")
        atomic_write(self.path(relative), data)
        return hashlib.sha256(data).hexdigest()

    def write_index(self, data: dict[str, Any]) -> None:
        atomic_write(self.path(INDEX_FILE), render_index(data).encode("utf-8"))
