"""The store's two hashes: of content (a file, bytes) and of a key (a canonical text).

NOTE: [one content hash, one key hash]
A content hash names exact bytes (an artifact, the stitching source, a kernel):
the full sha256 hex digest, so a check against it is as strong as sha256.  A
key hash names a folder or a cache slot from the factors that decide it: the
core's :func:`~stitch.core.hashing.key_hash` (see NOTE: [one key hash] in
``core/hashing.py``), handed on here so the store's callers find both hashes in
one place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch.fx as fx

from stitch.codegen.fingerprint import describe_example, graph_hash
from stitch.core.hashing import key_hash

__all__ = [
    "content_hash",
    "file_hash",
    "file_hash_or_none",
    "graph_key",
    "key_hash",
]

_CHUNK = 1 << 20


def content_hash(data: bytes) -> str:
    """The sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_hash(path: str) -> str:
    """The sha256 hex digest of the file at ``path`` (read in chunks); raises ``OSError``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hash_or_none(path: str) -> str | None:
    """:func:`file_hash`, or None where the file cannot be read."""
    try:
        return file_hash(path)
    except OSError:
        return None


def graph_key(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> str:
    """The key of a backend call's graph: its canonical lines and its example
    inputs' dtype, shape, stride and device (an entry's folder covers it)."""
    text = graph_hash(gm) + "".join(describe_example(v) for v in example_inputs)
    return content_hash(text.encode())
