"""What a shared entry is (its manifest), and the fleet key that signs it.

NOTE: [a shared entry is a signed manifest over content-addressed blobs]
A shared entry stands for one folder of the local cache (a compile cache entry,
or a saved forward with the entries it runs) as a manifest: each file's path
relative to the cache root, its sha256 and size.  The files' bytes are blobs
filed under their sha256, stored before the manifest, so a manifest is visible
only once everything it names is there.  The manifest is signed with the
fleet's key (HMAC-SHA256 over its exact bytes): a replica reads a manifest only
after the signature holds, and writes a blob to its local cache only after its
bytes hash to what the manifest says.  Whoever lacks the key can neither make
an entry a replica accepts nor change one without it being refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from typing import Annotated

import msgspec

from .. import codec
from ..codec import Record, RecordError
from ..index import Count, Sha256

SHARED_FORMAT = 1
KEY_ENV = "STITCH_CACHE_KEY"
KEY_FILE_ENV = "STITCH_CACHE_KEY_FILE"
# hex(HMAC-SHA256), then a newline, then the manifest's text.
_SIG_CHARS = 64

# A path relative to the cache root, "/"-separated: no "..", no absolute path,
# no hidden part (temporary and lock files are never shared).
RelPath = Annotated[
    str,
    msgspec.Meta(pattern=r"^(?!.*(^|/)\.)(?!/)[A-Za-z0-9_.=+-]+(/[A-Za-z0-9_.=+-]+)*$"),
]

# A unit's name: its folder, and for a saved forward "@" and its record's key.
UnitName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(?!.*(^|/)\.)[A-Za-z0-9_.=+-]+(/[A-Za-z0-9_.=+-]+)*(@[0-9a-f]+)?$"
    ),
]


class SharedFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: RelPath
    sha256: Sha256
    size: Count


class SharedEntry(Record, frozen=True):
    """One shared entry: the files of a unit of the local cache."""

    KIND = "shared-entry"
    VERSION = SHARED_FORMAT

    unit: UnitName
    files: tuple[SharedFile, ...]
    # Who published it (host:pid) and when (seconds since the epoch).
    writer: str
    created: float
    stitch: str
    torch: str

    def __post_init__(self) -> None:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("files: a path appears twice")

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


class FleetKey:
    """The fleet's signing key; :meth:`load` finds it or says why there is none."""

    def __init__(self, secret: bytes, source: str) -> None:
        self._secret = secret
        self.source = source

    @classmethod
    def load(cls) -> FleetKey | str:
        """``$STITCH_CACHE_KEY`` (the key itself), else the file named by
        ``$STITCH_CACHE_KEY_FILE`` (mode 0600, yours); else why there is none."""
        text = os.environ.get(KEY_ENV, "")
        if text:
            return cls(text.encode(), f"${KEY_ENV}")
        path = os.environ.get(KEY_FILE_ENV, "")
        if not path:
            return f"no fleet key (set ${KEY_ENV}, or ${KEY_FILE_ENV} to a 0600 file)"
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read(1 << 16)
        except OSError as exc:
            return f"the fleet key file {path} cannot be read ({exc.strerror or exc})"
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077 or (hasattr(os, "geteuid") and st.st_uid != os.geteuid()):
            return (
                f"the fleet key file {path} has mode {mode:04o} or another owner; "
                f"it must be yours with mode 0600 (chmod 600 {path})"
            )
        secret = data.strip()
        if not secret:
            return f"the fleet key file {path} is empty"
        return cls(secret, path)

    def sign(self, data: bytes) -> str:
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()

    def seal(self, entry: SharedEntry) -> bytes:
        """The stored form of ``entry``: its signature, a newline, its text."""
        data = codec.encode(entry)
        return self.sign(data).encode() + b"\n" + data

    def open(self, stored: bytes, name: str) -> SharedEntry:
        """The entry in ``stored`` (read under ``name``), after its signature
        holds; raises :class:`RecordError` naming it otherwise."""
        sig, newline, data = stored[:_SIG_CHARS], stored[_SIG_CHARS:][:1], stored[65:]
        if newline != b"\n":
            raise RecordError(name, "", "is not signed (no signature line)")
        if not hmac.compare_digest(sig, self.sign(data).encode()):
            raise RecordError(
                name, "", "is signed with another key (or was changed after signing)"
            )
        return codec.decode(SharedEntry, data, name)


def unverified(stored: bytes, name: str) -> SharedEntry | None:
    """The entry in ``stored`` with its signature NOT checked (None: it does not
    decode): only for what eviction must count and not delete as an orphan,
    never for anything that is installed or run."""
    try:
        return codec.decode(SharedEntry, stored[_SIG_CHARS + 1 :], name)
    except RecordError:
        return None
