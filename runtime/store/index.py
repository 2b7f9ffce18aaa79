"""The cache's index: the record that describes one cache entry (``index.py``).

The index is a :class:`~.codec.Record` (``store/codec.py``: a typed, versioned
Python literal, never executed) describing one cache entry::

    {'kind': 'index', 'version': 6,
     'identity': {'stitch_version': ..., 'torch_version': ..., 'config_hash': ...,
                  'graph_key': ..., 'backend': ..., 'group': ...},
     'source': {'file': 'execution_fn.py', 'sha256': ..., 'submod_names': [...],
                'dispatch_on': <placeholder name or None>} or None,
     'pieces': {<piece name>: {'module_path': ..., 'size_index': <int or None>,
                               'layouts': [[<argument index>, [<dim>, ...]], ...],
                               'entries': [{'target': 'general' | 'size8' | ...,
                                            'key': <compile key>, 'saved': bool,
                                            'note': <why not saved, or ''>}, ...]}},
     'guards': [<a guard the compile added, as text: 'Eq(s27, 7)'>, ...],
     'refused': {<compile key>: <why its compiled form is not run>, ...}}

``guards`` lists what the compile added to Dynamo's ShapeEnv; the entry
applies only where they hold (see NOTE: [the guards a backend call adds are
part of its cache entry] in ``compat/shapes.py``).

Reading validates every field.  What does not validate is reported as one
problem naming the field (``pieces['submod_2'].entries[1].key``): a bad piece
or source record is dropped alone, anything else drops the whole index.  The
artifacts themselves are found by compile key and carry their own identity
(``artifacts.py``); the index adds what a warm start needs without fake
propagation (each piece's size argument, targets and keys) and the source's hash.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import msgspec

from . import codec
from .codec import Record, RecordError, short

INDEX_FILE = "index.py"
LOCK_FILE = "index.lock"  # serializes index updates between processes
SOURCE_FILE = "execution_fn.py"
# 3: a piece's runtime-size argument is "size_index" (was "sym_index").
# 4: a piece records the layouts of its arguments from splitting pieces.
# 6: the codec's envelope (kind, version); the identity is one field.
INDEX_FORMAT = 6

# The constrained strings of the records (msgspec checks them on read).
Key = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{8,64}$")]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
TargetKey = Annotated[
    str,
    msgspec.Meta(pattern=r"^(general|size[1-9][0-9]*|range[1-9][0-9]*-[1-9][0-9]*)$"),
]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Count = Annotated[int, msgspec.Meta(ge=0)]


# -- the index ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EntryIdentity:
    """What a cache entry is for; an index for anything else is not used."""

    stitch_version: str
    torch_version: str
    config_hash: str
    graph_key: str
    backend: str
    # The folder the entry shares with the other ranks of one engine ("": the
    # entry's own, by graph key); see NOTE: [ranks of one engine share a folder]
    # in location.py.
    group: str = ""


class EntryRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One compiled runnable of a piece: its target, compile key, whether it is on disk."""

    target: TargetKey
    key: Key
    saved: bool
    note: str = ""  # why it was not saved


class PieceRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    module_path: str
    size_index: Count | None
    entries: Annotated[tuple[EntryRecord, ...], msgspec.Meta(min_length=1)]
    # (argument index, dims outermost to innermost) of each argument whose
    # layout the piece cannot count on (a splitting piece's output, or a
    # compiled piece's with unbacked strides): NOTE: [piece inputs restrided to
    # their compiled layout]
    # (pipeline/layouts.py), which every process that runs the piece applies.
    layouts: tuple[tuple[Count, tuple[int, ...]], ...]

    def __post_init__(self) -> None:
        if len({e.target for e in self.entries}) != len(self.entries):
            raise ValueError("names a target twice in entries")
        for i, order in self.layouts:
            if sorted(order) != list(range(len(order))):
                raise ValueError(
                    f"layouts: argument {i}'s dims {list(order)} are not an order"
                )

    def entry(self, target: str) -> EntryRecord | None:
        return next((e for e in self.entries if e.target == target), None)


class SourceRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    file: Literal["execution_fn.py"]
    sha256: Sha256
    submod_names: tuple[Name, ...]
    dispatch_on: Name | None


class EditedRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An edited stitching file that ran while the entry was written (NOTE: [an edited
    stitching file runs in place of the emitted one], edited_source.py)."""

    path: str
    sha256: Sha256


class Index(Record, frozen=True):
    KIND = "index"
    VERSION = INDEX_FORMAT

    identity: EntryIdentity
    source: SourceRecord | None
    pieces: dict[Name, PieceRecord]
    guards: tuple[str, ...] = ()
    # Compile keys whose compiled form a tiered start found to differ from the
    # uncompiled piece: they run uncompiled, and are not compiled again.
    refused: dict[Key, str] = msgspec.field(default_factory=dict)
    # The edited stitching file that ran while this entry was written, if
    # any; the source file stays the emitted one.
    edited: EditedRecord | None = None

    def render(self) -> str:
        return codec.render(self)

    def with_piece(self, name: str, record: PieceRecord) -> Index:
        return msgspec.structs.replace(self, pieces={**self.pieces, name: record})


@dataclasses.dataclass
class IndexRead:
    """An index as read: what validated, and one line per problem."""

    index: Index | None
    problems: list[str]


def parse_index(
    text: str | bytes, expected: EntryIdentity | None, path: str = INDEX_FILE
) -> IndexRead:
    """Validate ``text`` as the index of the entry ``expected`` describes.

    With ``expected=None`` (``stitch inspect``) the identity fields are only
    type-checked.  Each problem is ``field <path> <why>`` (the file is the
    caller's to name).
    """
    problems: list[str] = []
    try:
        data = codec.parse(text, path)
        for _ in range(
            len(data.get("pieces") or ()) + 2 if isinstance(data, dict) else 1
        ):
            try:
                index = codec.decode(Index, data, path)
                break
            except RecordError as exc:
                # NOTE: [a broken piece record is dropped alone]
                # One bad piece (or source) record costs that piece's compile,
                # not the whole entry: drop it and read the rest again.
                if not _drop(data, exc.field):
                    raise
                problems.append(exc.detail)
        else:  # pragma: no cover - every round drops one record
            raise RecordError(path, "", "has too many broken records")
    except RecordError as exc:
        return IndexRead(None, [*problems, exc.detail])
    if expected is not None:
        for name, want in dataclasses.asdict(expected).items():
            have = getattr(index.identity, name)
            if have != want:
                why = (
                    f"field identity.{name}: is {short(have)}, expected {want!r} "
                    "(this entry's)"
                )
                return IndexRead(None, [*problems, why])
    return IndexRead(index, problems)


def _drop(data: Any, field: str) -> bool:
    """Remove the piece or source record ``field`` names; whether there was one."""
    if not isinstance(data, dict):
        return False
    if field == "source" or field.startswith("source."):
        data["source"] = None
        return True
    pieces = data.get("pieces")
    if isinstance(pieces, dict):
        for name in list(pieces):
            at = f"pieces[{name!r}]"
            if field == at or field.startswith((at + ".", at + "[")):
                del pieces[name]
                return True
    return False
