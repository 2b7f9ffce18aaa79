"""The one key hash, below codegen and runtime alike.

NOTE: [one key hash]
A key hash names a folder, a file or a cache slot from the factors that decide
it (an entry's identity, a model's structure, a saved signature's inputs, the
text of emitted source): the sha256 of the factors' ``repr`` (callers pass
strings, tuples, lists and sorted dicts of plain values, whose ``repr`` is
stable), cut to :data:`KEY_CHARS` hex characters.  One truncation for every
key: 96 bits make a collision between two keys of one cache unthinkable, and
paths stay short.  It lives in the core so that codegen, which imports nothing
of the runtime, uses the same one (``runtime/store/digests.py`` hands it on
beside the content hash).
"""

from __future__ import annotations

import hashlib
from typing import Any

# See NOTE: [one key hash].
KEY_CHARS = 24


def key_hash(*factors: Any) -> str:
    """The key of ``factors``: sha256 of their canonical text, :data:`KEY_CHARS` long."""
    return hashlib.sha256(repr(factors).encode()).hexdigest()[:KEY_CHARS]
