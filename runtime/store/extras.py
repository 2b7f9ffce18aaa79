"""Extra files of an artifact: files made from it and loaded beside it, sealed like it.

NOTE: [extra files are sealed like the artifact]
The pipeline keeps files derived from a saved artifact under ``<entry>/prebuilt/``
(a piece's prebuilt wrapper record and the kernel libraries it loads:
``pipeline/prebuilt/load.py``).  They are imported and dlopen'd, so they get the
artifact's checks: ``artifacts/<key>/extras.py``, beside ``identity.py``, lists
each file (a path under the entry) with its size and sha256, names the
artifact's sha256, and carries a checksum of itself.

- Writing (:func:`save_extras`), under the entry's lock: every file first, each
  atomically (a file already there is kept only if it has the recorded size and
  sha256), the list last.  A list never names a file that is not whole.
- Reading (:func:`open_extras`, :class:`Extras`): the list must validate and
  name this artifact; each file is trust-checked (``trust.py``), must be listed,
  and must have its recorded size and sha256 before it is read, imported or
  loaded.  What fails is an :class:`ExtraFileError` naming the file and why.
- The list lives in the artifact's folder: an artifact that is replaced drops
  its extras with it.  No list means no extras (never made, or made by an older
  Stitch): nothing is loaded from ``prebuilt/`` for that artifact.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import msgspec

from stitch.core.errors import StitchCacheError

from . import codec
from .codec import Record, RecordError, short
from .digests import content_hash, file_hash
from .files import atomic_write, locked, make_private_dirs
from .index import Count, Key, Sha256
from .location import (
    EXTRAS_FILE,
    PREBUILT_DIR,
    PREBUILT_SUFFIX,
    artifact_file,
    extra_path,
    extras_file,
    locate_artifact,
    lock_file,
)
from .records import PrebuiltRecord
from .trust import check_trusted

__all__ = ["EXTRAS_FILE"]

# 2: the codec's envelope (kind, version).
EXTRAS_FORMAT = 2
# A relative path under ``prebuilt/``, ``/``-separated, of plain names.
ExtraName = Annotated[
    str,
    msgspec.Meta(pattern=r"^prebuilt(/[A-Za-z0-9_][A-Za-z0-9_.-]*)+$"),
]


class ExtraFileError(StitchCacheError):
    """An extra file, or the list of them, is missing, truncated or changed."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class NoExtras(Exception):
    """No extra files are recorded for the artifact (none were made)."""


def is_extra_name(value: Any) -> bool:
    """A relative path under ``prebuilt/``, ``/``-separated, of plain names."""
    try:
        msgspec.convert(value, ExtraName)
    except msgspec.ValidationError:
        return False
    return True


class ExtraFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    size: Count
    sha256: Sha256


class ExtrasRecord(Record, frozen=True):
    """``extras.py``: the artifact (key and sha256) and its extra files."""

    KIND = "extras"
    VERSION = EXTRAS_FORMAT
    SEALED = True

    key: Key
    artifact_sha256: Sha256
    files: dict[ExtraName, ExtraFile]


def file_problem(path: str, want: ExtraFile) -> str | None:
    """Why the file at ``path`` is not the recorded one (None: it is)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not stat.S_ISREG(st.st_mode):
        return "is not a file"
    try:
        return _content_problem(st.st_size, lambda: file_hash(path), want)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"


def _content_problem(
    size: int, sha256: Callable[[], str], want: ExtraFile
) -> str | None:
    """Why content of ``size`` bytes, hashing to ``sha256()`` (asked only when
    the size is right), is not the recorded one (None: it is)."""
    if size != want.size:
        return f"is {size} bytes, its record says {want.size} (truncated or changed)"
    actual = sha256()
    if actual != want.sha256:
        return (
            f"has sha256 {actual[:12]}..., its record says {want.sha256[:12]}... "
            "(changed)"
        )
    return None


class Extras:
    """The validated list of one artifact's extra files; each file is checked as it is used."""

    def __init__(
        self, root: str, entry: str, list_path: str, record: ExtrasRecord
    ) -> None:
        self.root = root
        self.entry = entry
        self.list_path = list_path
        self.record = record

    def _listed(self, name: str) -> tuple[str, ExtraFile]:
        path = extra_path(self.entry, name)
        want = self.record.files.get(name)
        if want is None:
            raise ExtraFileError(path, f"is not listed in {self.list_path}")
        check_trusted(path, self.root)
        return path, want

    def read(self, name: str) -> bytes:
        """The bytes of extra file ``name``, checked (what is used is what was hashed)."""
        path, want = self._listed(name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ExtraFileError(path, "is missing") from None
        except OSError as exc:
            raise ExtraFileError(
                path, f"cannot be read ({exc.strerror or exc})"
            ) from None
        problem = _content_problem(len(data), lambda: content_hash(data), want)
        if problem is not None:
            raise ExtraFileError(path, problem)
        return data

    def verified_path(self, name: str) -> str:
        """The path of extra file ``name``, checked, for a loader that opens it itself
        (``dlopen``).  See docs/cache.md for the window between check and load."""
        path, want = self._listed(name)
        problem = file_problem(path, want)
        if problem is not None:
            raise ExtraFileError(path, problem)
        return path


def _read_list(list_path: str) -> ExtrasRecord:
    try:
        with open(list_path, "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise NoExtras(list_path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExtraFileError(
            list_path, f"cannot be read ({type(exc).__name__}: {exc})"
        ) from None
    try:
        return codec.decode(ExtrasRecord, text, list_path)
    except RecordError as exc:
        raise ExtraFileError(list_path, exc.detail) from None


def open_extras(artifact_path: str, artifact_sha256: str | None) -> Extras:
    """The extra files of the artifact at ``artifact_path`` (whose bytes hash to
    ``artifact_sha256``, already checked by the caller).

    Raises :class:`NoExtras` when none are recorded for these bytes,
    :class:`ExtraFileError` when the list is damaged or belongs to another
    artifact, and
    ``StitchCacheTrustError`` when it could have been written by someone else.
    """
    root, entry, key = locate_artifact(artifact_path)
    list_path = extras_file(os.path.dirname(os.path.abspath(artifact_path)))
    check_trusted(list_path, root)
    record = _read_list(list_path)
    if record.key != key:
        raise ExtraFileError(
            list_path, f"field key is {short(record.key)}, but the folder is {key!r}"
        )
    if artifact_sha256 is not None and record.artifact_sha256 != artifact_sha256:
        # Stale, not damaged: the artifact was rewritten (and is checked on its
        # own); its extras were made from other bytes and are not used.
        raise NoExtras(f"{list_path} was made for another version of the artifact")
    return Extras(root, entry, list_path, record)


def save_extras(
    artifact_path: str, artifact_sha256: str, files: Mapping[str, bytes]
) -> str:
    """Write ``files`` (names under ``prebuilt/``) and list them as the artifact's
    extra files, replacing any list it had; the list's path.

    Raises ``OSError`` when the entry cannot be written.
    """
    root, entry, key = locate_artifact(artifact_path)
    bad = sorted(name for name in files if not is_extra_name(name))
    if bad:
        raise StitchCacheError(
            f"extra files must be plain paths under {PREBUILT_DIR}/, not {bad[0]!r}"
        )
    list_path = extras_file(os.path.dirname(os.path.abspath(artifact_path)))
    listed: dict[str, ExtraFile] = {}
    with locked(lock_file(entry)):
        for name, data in sorted(files.items()):
            want = ExtraFile(len(data), content_hash(data))
            path = extra_path(entry, name)
            make_private_dirs(os.path.dirname(path), root)
            if file_problem(path, want) is not None:
                atomic_write(path, data)
            listed[name] = want
        record = ExtrasRecord(key, artifact_sha256, listed)
        atomic_write(list_path, codec.encode(record))
    return list_path


def inspect_extras(
    artifact_folder: str, artifact_sha256: str
) -> tuple[set[str], list[tuple[str, str]]]:
    """For ``stitch inspect``: the names an artifact lists, and ``(path, problem)``
    for the list and each listed file that is not whole (no trust checks: the
    inspection walks the permissions itself)."""
    list_path = extras_file(artifact_folder)
    try:
        record = _read_list(list_path)
    except NoExtras:
        return set(), []
    except ExtraFileError as exc:
        return set(), [(exc.path, exc.problem)]
    key = os.path.basename(os.path.abspath(artifact_folder))
    if record.key != key:
        why = f"field key is {short(record.key)}, but the folder is {key!r}"
        return set(record.files), [(list_path, why)]
    if record.artifact_sha256 != artifact_sha256:
        why = (
            f"field artifact_sha256 is {record.artifact_sha256[:12]}..., but the "
            f"artifact hashes to {artifact_sha256[:12]}..."
        )
        return set(record.files), [(list_path, why)]
    _, entry, _ = locate_artifact(artifact_file(artifact_folder))
    problems = []
    for name, want in sorted(record.files.items()):
        path = extra_path(entry, name)
        problem = file_problem(path, want)
        if problem is None and name.endswith(PREBUILT_SUFFIX):
            problem = _record_problem(path)
        if problem is not None:
            problems.append((path, problem))
    return set(record.files), problems


def _record_problem(path: str) -> str | None:
    """Whether a listed prebuilt record decodes (its bytes matched the list)."""
    try:
        codec.read(PrebuiltRecord, path)
    except RecordError as exc:
        return exc.detail
    return None
