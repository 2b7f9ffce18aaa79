"""The store's two hashes: of content (a file, bytes) and of a key (a canonical text).

NOTE: [one content hash, one key hash]
A content hash names exact bytes (an artifact, the stitching source, a kernel):
the full sha256 hex digest, so a check against it is as strong as sha256.  A
key hash names a folder or a cache slot from the factors that decide it (an
entry's identity, a model's structure, a machine): the sha256 of the factors'
``repr`` (callers pass tuples, lists and sorted dicts of plain values, whose
``repr`` is stable), cut to :data:`KEY_CHARS` hex characters.  One truncation
for every key: 96 bits make a collision between two entries of one cache
unthinkable, and paths stay short.
"""

from __future__ import annotations

import hashlib
from typing import Any

# See NOTE: [one content hash, one key hash].
KEY_CHARS = 24
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


def key_hash(*factors: Any) -> str:
    """The key of ``factors``: sha256 of their canonical text, :data:`KEY_CHARS` long."""
    return hashlib.sha256(repr(factors).encode()).hexdigest()[:KEY_CHARS]
