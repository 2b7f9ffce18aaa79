"""The cache's records, typed: the index (``index.py``) and how every record is read.

The index is a Python literal (read with ``ast.literal_eval``, never executed)
describing one cache entry::

    {"format": 5, "stitch_version": ..., "torch_version": ..., "config_hash": ...,
     "graph_key": ..., "backend": ..., "group": ...,
     "source": {"file": "execution_fn.py", "sha256": ..., "submod_names": [...],
                "dispatch_on": <placeholder name or None>} or None,
     "pieces": {<piece name>: {"module_path": ..., "size_index": <int or None>,
                               "layouts": [[<argument index>, [<dim>, ...]], ...],
                               "entries": [{"target": "general" | "size8" | ...,
                                            "key": <compile key>, "saved": bool,
                                            "note": <why not saved, or "">}, ...]}},
     "guards": [<a guard the compile added, as text: "Eq(s27, 7)">, ...]}

``guards`` (absent in entries written before it: none) lists what the compile
added to Dynamo's ShapeEnv; the entry applies only where they hold (see NOTE:
[the guards a backend call adds are part of its cache entry] in
``compat/shapes.py``).

Reading validates every field.  What does not validate is reported as one
problem naming the field (``pieces['submod_2'].entries[1].key``): a bad piece
or source record is dropped alone, anything else drops the whole index.  The
artifacts themselves are found by compile key and carry their own identity
(``artifacts.py``); the index adds what a warm start needs without fake
propagation (each piece's size argument, targets and keys) and the source's hash.
"""

from __future__ import annotations

import ast
import dataclasses
import pprint
import re
from collections.abc import Callable, Mapping
from typing import Any

INDEX_FILE = "index.py"
LOCK_FILE = "index.lock"  # serializes index updates between processes
SOURCE_FILE = "execution_fn.py"
# 3: a piece's runtime-size argument is "size_index" (was "sym_index").
# 4: a piece records the layouts of its arguments from splitting pieces.
INDEX_FORMAT = 5

_HEX = re.compile(r"[0-9a-f]{8,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TARGET = re.compile(r"general|size[1-9][0-9]*|range[1-9][0-9]*-[1-9][0-9]*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Invalid(Exception):
    """A record field that does not validate (``field`` names it, ``str`` says why)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field} {problem}")
        self.field = field


# -- reading and writing literals --------------------------------------------------------


def parse_literal(text: str) -> Any:
    """The literal in ``text``; raises :class:`Invalid` when there is none."""
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as exc:
        raise Invalid(
            "<file>", f"is not a Python literal ({type(exc).__name__})"
        ) from None


def render_literal(header: str, data: Any) -> str:
    text = f"# {header}\n" + pprint.pformat(data, sort_dicts=True, width=100) + "\n"
    ast.literal_eval(text)  # never write what we could not read back
    return text


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def field(
    data: Mapping[str, Any],
    name: str,
    where: str,
    ok: Callable[[Any], bool],
    expected: str,
) -> Any:
    """``data[name]`` if ``ok`` accepts it; else :class:`Invalid` naming ``where + name``."""
    if name not in data:
        raise Invalid(where + name, "is missing")
    value = data[name]
    if not ok(value):
        raise Invalid(where + name, f"is {short(value)}, expected {expected}")
    return value


def is_str(value: Any) -> bool:
    return isinstance(value, str)


def is_int_or_none(value: Any) -> bool:
    return value is None or (type(value) is int and value >= 0)


def is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def matches(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and pattern.fullmatch(value) is not None


def is_dict(value: Any) -> bool:
    return isinstance(value, dict)


is_key = matches(_HEX)
is_sha256 = matches(_SHA256)
is_target = matches(_TARGET)


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


@dataclasses.dataclass(frozen=True)
class EntryRecord:
    """One compiled runnable of a piece: its target, compile key, whether it is on disk."""

    target: str
    key: str
    saved: bool
    note: str = ""  # why it was not saved

    @classmethod
    def parse(cls, data: Any, where: str) -> EntryRecord:
        if not isinstance(data, dict):
            raise Invalid(where.rstrip("."), f"is {short(data)}, expected a dict")
        return cls(
            target=field(
                data, "target", where, is_target, "a target like 'general' or 'size8'"
            ),
            key=field(data, "key", where, is_key, "a hex compile key"),
            saved=field(data, "saved", where, is_bool, "a bool"),
            note=field(data, "note", where, is_str, "a str"),
        )


@dataclasses.dataclass(frozen=True)
class PieceRecord:
    module_path: str
    size_index: int | None
    entries: tuple[EntryRecord, ...]
    # (argument index, dims outermost to innermost) of each argument a splitting
    # piece makes: NOTE: [eager outputs are restrided for compiled pieces]
    # (pipeline/layouts.py), which every process that runs the piece applies.
    layouts: tuple[tuple[int, tuple[int, ...]], ...] = ()

    @classmethod
    def parse(cls, data: Any, where: str) -> PieceRecord:
        if not isinstance(data, dict):
            raise Invalid(where.rstrip("."), f"is {short(data)}, expected a dict")
        entries = field(
            data,
            "entries",
            where,
            lambda v: isinstance(v, list) and v,
            "a non-empty list",
        )
        parsed = tuple(
            EntryRecord.parse(e, f"{where}entries[{i}].") for i, e in enumerate(entries)
        )
        if len({e.target for e in parsed}) != len(parsed):
            raise Invalid(f"{where}entries", "names a target twice")
        return cls(
            module_path=field(data, "module_path", where, is_str, "a str"),
            size_index=field(
                data, "size_index", where, is_int_or_none, "an int >= 0 or None"
            ),
            entries=parsed,
            layouts=tuple(
                (i, tuple(order))
                for i, order in field(
                    data, "layouts", where, _is_layouts, "a list of [int, [int, ...]]"
                )
            ),
        )

    def entry(self, target: str) -> EntryRecord | None:
        return next((e for e in self.entries if e.target == target), None)


def _is_layouts(value: Any) -> bool:
    def is_index(v: Any) -> bool:
        return type(v) is int and v >= 0

    return isinstance(value, list) and all(
        isinstance(item, list)
        and len(item) == 2
        and is_index(item[0])
        and isinstance(item[1], list)
        and all(type(d) is int for d in item[1])
        and sorted(item[1]) == list(range(len(item[1])))
        for item in value
    )


@dataclasses.dataclass(frozen=True)
class SourceRecord:
    file: str
    sha256: str
    submod_names: tuple[str, ...]
    dispatch_on: str | None

    @classmethod
    def parse(cls, data: Any, where: str) -> SourceRecord:
        if not isinstance(data, dict):
            raise Invalid(
                where.rstrip("."), f"is {short(data)}, expected a dict or None"
            )
        names = field(
            data,
            "submod_names",
            where,
            lambda v: isinstance(v, list) and all(matches(_NAME)(n) for n in v),
            "a list of piece names",
        )
        return cls(
            file=field(
                data, "file", where, lambda v: v == SOURCE_FILE, repr(SOURCE_FILE)
            ),
            sha256=field(data, "sha256", where, is_sha256, "a sha256 hex digest"),
            submod_names=tuple(names),
            dispatch_on=field(
                data,
                "dispatch_on",
                where,
                lambda v: v is None or matches(_NAME)(v),
                "a placeholder name or None",
            ),
        )


@dataclasses.dataclass(frozen=True)
class Index:
    identity: EntryIdentity
    source: SourceRecord | None
    pieces: Mapping[str, PieceRecord]
    guards: tuple[str, ...] = ()

    def to_literal(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": INDEX_FORMAT,
            **dataclasses.asdict(self.identity),
        }
        data["source"] = (
            None
            if self.source is None
            else {
                "file": self.source.file,
                "sha256": self.source.sha256,
                "submod_names": list(self.source.submod_names),
                "dispatch_on": self.source.dispatch_on,
            }
        )
        data["pieces"] = {
            name: {
                "module_path": p.module_path,
                "size_index": p.size_index,
                "layouts": [[i, list(order)] for i, order in p.layouts],
                "entries": [dataclasses.asdict(e) for e in p.entries],
            }
            for name, p in self.pieces.items()
        }
        data["guards"] = list(self.guards)
        return data

    def render(self) -> str:
        return render_literal(
            "Stitch compile cache index: a Python literal (ast.literal_eval).",
            self.to_literal(),
        )

    def with_piece(self, name: str, record: PieceRecord) -> Index:
        return dataclasses.replace(self, pieces={**self.pieces, name: record})


@dataclasses.dataclass
class IndexRead:
    """An index as read: what validated, and one line per problem."""

    index: Index | None
    problems: list[str]


def parse_index(text: str, expected: EntryIdentity | None) -> IndexRead:
    """Validate ``text`` as the index of the entry ``expected`` describes.

    With ``expected=None`` (``stitch inspect``) the identity fields are only
    type-checked.
    """
    try:
        data = parse_literal(text)
        if not isinstance(data, dict):
            raise Invalid("<file>", f"holds {type(data).__name__}, expected a dict")
        field(data, "format", "", lambda v: v == INDEX_FORMAT, f"format {INDEX_FORMAT}")
        if expected is None:
            names = [f.name for f in dataclasses.fields(EntryIdentity)]
            expected = EntryIdentity(
                *(field(data, n, "", is_str, "a str") for n in names)
            )
        for name, want in dataclasses.asdict(expected).items():
            field(
                data,
                name,
                "",
                lambda v, want=want: v == want,
                f"{want!r} (this entry's)",
            )
        pieces_data = field(data, "pieces", "", is_dict, "a dict of piece records")
    except Invalid as exc:
        return IndexRead(None, [str(exc)])
    problems: list[str] = []
    source = None
    try:
        if field(data, "source", "", lambda v: True, "") is not None:
            source = SourceRecord.parse(data["source"], "source.")
    except Invalid as exc:
        problems.append(str(exc))
    pieces: dict[str, PieceRecord] = {}
    for name, record in pieces_data.items():
        try:
            if not matches(_NAME)(name):
                raise Invalid(f"pieces[{short(name)}]", "is not named like a piece")
            pieces[name] = PieceRecord.parse(record, f"pieces[{name!r}].")
        except Invalid as exc:
            problems.append(str(exc))
    guards = data.get("guards", [])
    if not (isinstance(guards, list) and all(isinstance(g, str) for g in guards)):
        # Unreadable guards would make the entry apply everywhere: drop it all.
        return IndexRead(
            None, [f"field guards is {short(guards)}, expected a list of str"]
        )
    return IndexRead(Index(expected, source, pieces, tuple(guards)), problems)
