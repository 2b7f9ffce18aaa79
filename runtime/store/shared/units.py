"""Units: the parts of the local cache a shared entry stands for, and their files.

A unit is a compile cache entry (``<entry key>/rank_<r>``: the key already
covers the graph, config, torch and Stitch), or a saved forward with what it
runs (``aot/<model key>/rank_<r>``, the folders of its later signatures, and
the compile cache entries their records name).  A saved forward's folder is
keyed by the model alone, so its unit's name adds the key of what the record
must match (``record.factors``): two configs of one model are two entries.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import msgspec

from .. import codec, location
from ..digests import file_hash, key_hash
from ..index import INDEX_FILE, LOCK_FILE
from ..records import AOTRecord
from ..trust import check_trusted
from .manifest import SharedEntry, SharedFile

# Written last when installed: a folder is used only once these are there.
MARKERS = (INDEX_FILE, location.AOT_SIGNATURES_FILE, location.AOT_RECORD_FILE)
_ENTRY_FOLDER = re.compile(r"^[0-9a-f]{8,64}/rank_\d+$")


@dataclasses.dataclass(frozen=True)
class Unit:
    """``name``: the shared entry's name; ``folder``: the local folder it starts
    from, relative to the cache root, ``/``-separated."""

    name: str
    folder: str

    @property
    def saved_forward(self) -> bool:
        return self.folder.startswith(location.AOT_DIR + "/")

    def allows(self, path: str) -> bool:
        """Whether a shared entry of this unit may hold ``path`` (relative)."""
        parts = path.split("/")
        if self.saved_forward:
            top = "/".join(parts[:3])
            if top == self.folder or top.startswith(self.folder + ".sig_"):
                return True
            return bool(_ENTRY_FOLDER.match("/".join(parts[:2])))
        return path.startswith(self.folder + "/")


def entry_unit(root: str, directory: str) -> Unit:
    """The unit of the compile cache entry in ``directory``."""
    folder = location.reference_name(root, directory)
    return Unit(folder, folder)


def saved_forward_unit(root: str, folder: str, factors: object) -> Unit:
    """The unit of the saved forward in ``folder``, for a record of ``factors``."""
    relative = location.reference_name(root, folder)
    # Canonical: the factors as computed (tuples) and as read back from the
    # record (lists, sorted keys) name one unit.
    text = json.dumps(msgspec.to_builtins(factors, enc_hook=str), sort_keys=True)
    return Unit(f"{relative}@{key_hash(text)}", relative)


def _folder_files(folder: str) -> list[str]:
    """The files of ``folder`` (absolute) that are shared: no hidden files, no lock."""
    found = []
    for directory, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for name in sorted(files):
            if not name.startswith(".") and name != LOCK_FILE:
                found.append(os.path.join(directory, name))
    return found


def unit_folders(root: str, unit: Unit) -> list[str]:
    """The local folders (absolute) whose files make ``unit`` now."""
    first = location.reference_entry(root, unit.folder)
    if not unit.saved_forward:
        return [first]
    folders = [first]
    parent, base = os.path.split(first)
    if os.path.isdir(parent):
        folders += [
            os.path.join(parent, n)
            for n in sorted(os.listdir(parent))
            if n.startswith(base + ".sig_")
        ]
    entries = []
    for folder in folders:
        try:
            record = codec.read(AOTRecord, location.aot_record_file(folder))
        except (OSError, codec.RecordError):
            continue
        entry = record.stitched.get("entry")
        if isinstance(entry, str) and _ENTRY_FOLDER.match(entry):
            entries.append(location.reference_entry(root, entry))
    return folders + sorted(set(entries))


def collect(root: str, unit: Unit) -> list[tuple[SharedFile, str]]:
    """Each file of ``unit`` with its manifest line; raises ``OSError``."""
    check_trusted(location.reference_entry(root, unit.folder), root)
    out = []
    for folder in unit_folders(root, unit):
        for path in _folder_files(folder):
            relative = location.reference_name(root, path)
            if unit.allows(relative):
                line = SharedFile(relative, file_hash(path), os.path.getsize(path))
                out.append((line, path))
    return out


def install_order(entry: SharedEntry) -> list[SharedFile]:
    """The entry's files, markers (indexes and records) last."""
    return sorted(
        entry.files,
        key=lambda f: (f.path.rsplit("/", 1)[-1] in MARKERS, f.path),
    )


def local_units(root: str) -> list[Unit]:
    """Every unit of the cache at ``root``: its compile cache entries (those with
    an index) and its saved forwards (those whose record reads)."""
    units = []
    if not os.path.isdir(root):
        return units
    for entry in sorted(location.entry_folders(root)):
        unit = entry_unit(root, entry)
        if _ENTRY_FOLDER.match(unit.folder) and os.path.isfile(
            location.index_file(entry)
        ):
            units.append(unit)
    for folder in location.find_aot_folders(os.path.join(root, location.AOT_DIR)):
        if ".sig_" in os.path.basename(folder):
            continue
        try:
            record = codec.read(AOTRecord, location.aot_record_file(folder))
        except (OSError, codec.RecordError):
            continue
        units.append(saved_forward_unit(root, folder, record.factors))
    return units
