"""One codec for every record Stitch keeps on disk: typed, versioned, checked on read.

Each kind of record is a :class:`Record` subclass that declares its fields once
(with their types and constraints) and its ``KIND`` and ``VERSION``.
:func:`encode` writes it as a versioned envelope, a Python literal (a comment
line, then a dict: ``{'kind': ..., 'version': ..., <fields>}``, plus ``check``
for sealed kinds); :func:`decode` reads it back, and whatever does not decode
is one :class:`RecordError` naming the file and the field's path
(``index.py: field pieces['submod_0'].entries[1].key: expected str, got int (7)``).

NOTE: [the records are typed by msgspec]
``msgspec.Struct`` declares a record's fields once, as annotations, and
``msgspec.convert`` checks a parsed literal against them (types, ``Meta``
constraints, required and unknown fields, ``__post_init__`` checks) and says
where it failed.  It is chosen over pydantic because a warm start imports the
store: msgspec imports in about a millisecond and has no dependencies, while
pydantic's import costs tens of milliseconds (pydantic stays a dependency of
the serving extra only).

NOTE: [records stay Python literals]
The files are read with ``ast.literal_eval`` (never executed) as before: a
reviewer reads them as Python, tests and people edit them with the same tools,
and a saved forward's reference travels inside torch's own saved bytes as text.
A record whose ``kind`` or ``version`` is another is :class:`StaleRecord`:
written by another Stitch, a miss rather than damage.
"""

from __future__ import annotations

import copy
import pprint
import re
from typing import Any, ClassVar, TypeVar

import msgspec

from stitch.core.errors import StitchCacheError

from ..compat import python_ast
from .digests import content_hash

R = TypeVar("R", bound="Record")

ENVELOPE = ("kind", "version")
CHECK = "check"


class Record(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A record kind: its fields, its ``KIND`` and ``VERSION``; ``SEALED`` kinds
    carry a ``check`` (the sha256 of the rest) so an edit is noticed."""

    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 0
    SEALED: ClassVar[bool] = False


class RecordError(StitchCacheError):
    """A record file that does not decode: ``path`` (the file), ``field`` (the
    path of the field inside it, "" for the whole file) and ``problem``."""

    def __init__(self, path: str, field: str, problem: str) -> None:
        where = f"field {field}: " if field else ""
        super().__init__(f"{path}: {where}{problem}")
        self.path = path
        self.field = field
        self.problem = problem

    @property
    def detail(self) -> str:
        """The message without the file: ``field <path> <problem>``."""
        return f"field {self.field}: {self.problem}" if self.field else self.problem


class StaleRecord(RecordError):
    """A record of another kind or version (another Stitch wrote it): a miss."""


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- encoding --------------------------------------------------------------------


def to_literal(record: Record) -> dict[str, Any]:
    """The envelope of ``record`` as plain data (what :func:`encode` writes)."""
    data: dict[str, Any] = {
        "kind": record.KIND,
        "version": record.VERSION,
        **msgspec.to_builtins(record),
    }
    if record.SEALED:
        data[CHECK] = _checksum(data)
    return data


def render(record: Record) -> str:
    """The text of ``record``'s file: one comment line, then the literal."""
    header = (
        f"# Stitch {record.KIND} record, version {record.VERSION}: "
        "a Python literal (ast.literal_eval)\n"
    )
    text = header + pprint.pformat(to_literal(record), sort_dicts=True, width=100)
    text += "\n"
    python_ast.literal_eval(text)  # never write what could not be read back
    return text


def encode(record: Record) -> bytes:
    return render(record).encode("utf-8")


def _checksum(data: dict[str, Any]) -> str:
    # Nested dicts sorted too: the text read back has them in file order.
    body = {k: v for k, v in data.items() if k != CHECK}
    return content_hash(pprint.pformat(body, sort_dicts=True, width=1 << 20).encode())


# -- decoding --------------------------------------------------------------------


def parse(data: bytes | str, path: str) -> Any:
    """The literal in ``data`` (read from ``path``); :class:`RecordError` if none."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return python_ast.literal_eval(text)
    except UnicodeDecodeError as exc:
        raise RecordError(path, "", f"is not UTF-8 ({exc.reason})") from None
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as exc:
        raise RecordError(
            path, "", f"is not a Python literal ({type(exc).__name__})"
        ) from None


def decode(kind: type[R], data: bytes | str | Any, path: str) -> R:
    """The ``kind`` record in ``data`` (bytes or text of the file at ``path``, or
    its literal already parsed); raises :class:`RecordError` naming the file and
    the field, :class:`StaleRecord` for another kind or version."""
    if isinstance(data, (bytes, str)):
        data = parse(data, path)
    if not isinstance(data, dict):
        raise RecordError(path, "", f"holds {type(data).__name__}, expected a dict")
    for name, want in zip(ENVELOPE, (kind.KIND, kind.VERSION), strict=True):
        if name not in data:
            raise StaleRecord(path, name, f"is missing, expected {want!r}")
        if data[name] != want or type(data[name]) is not type(want):
            raise StaleRecord(path, name, f"is {short(data[name])}, expected {want!r}")
    body = {k: v for k, v in data.items() if k not in ENVELOPE}
    if kind.SEALED:
        check = body.pop(CHECK, None)
        if check != _checksum(data):
            raise RecordError(
                path, CHECK, "does not match the record (it was edited or is corrupted)"
            )
    return convert(kind, body, path)


def convert(kind: type[R], body: Any, path: str) -> R:
    """``body`` (plain data) as a ``kind``; :class:`RecordError` naming the field."""
    try:
        return msgspec.convert(body, kind, strict=True)
    except msgspec.ValidationError as exc:
        field, problem = _explain(kind, body, str(exc))
        raise RecordError(path, field, problem) from None


# msgspec says where: "Expected `int`, got `str` - at `$.pieces[...].size_index`"
# ("[...]": a dict's value, "`key` in `$.pieces`": a dict's key).
_AT = re.compile(r"^(?P<what>.*?) - at (?:`key` in )?`\$(?P<path>[^`]*)`$", re.S)
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]|(\[\.\.\.\])")
_MISSING = re.compile(r"Object missing required field `(\w+)`")


def _explain(kind: type[Any], body: Any, message: str) -> tuple[str, str]:
    """``(field path, problem)`` for msgspec's ``message`` about ``body``."""
    match = _AT.match(message)
    what, raw = (message, "") if match is None else (match["what"], match["path"])
    key_error = "`key` in" in message
    steps = _steps(kind, body, raw, message)
    missing = _MISSING.match(what)
    if missing is not None:
        steps.append(missing[1])
        what = "is missing"
    else:
        what = what.replace("`", "")
        what = what[:1].lower() + what[1:]
        value, found = _at(body, steps)
        if key_error:
            what = f"is not a valid name ({what})"
        elif found and not isinstance(value, dict):
            what = f"{what} ({short(value)})"
    field = ""
    for step in steps:
        if isinstance(step, int):
            field += f"[{step}]"
        elif isinstance(step, tuple):
            field += f"[{step[0]!r}]"
        else:
            field += f".{step}" if field else step
    return field, what


def _steps(kind: type[Any], body: Any, raw: str, message: str) -> list[Any]:
    """The path's steps: attribute names, list indices, ``(key,)`` for dict keys.

    msgspec writes a dict's key as ``[...]``: the key is the first whose item
    alone fails with the same message (found only when reading failed)."""
    steps: list[Any] = []
    for name, index, _ in (m.groups() for m in _STEP.finditer(raw)):
        if name is not None:
            steps.append(name)
        elif index is not None:
            steps.append(int(index))
        else:
            steps.append(_failing_key(kind, body, steps, raw, message))
    if "`key` in" in message:
        steps.append(_failing_key(kind, body, steps, raw, message))
    return steps


def _failing_key(
    kind: type[Any], body: Any, steps: list[Any], raw: str, message: str
) -> Any:
    mapping, found = _at(body, steps)
    if not found or not isinstance(mapping, dict):
        return ("...",)
    for key in mapping:
        trial = copy.deepcopy(body)
        holder, _ = _at(trial, steps)
        for other in [k for k in holder if k != key]:
            del holder[other]
        try:
            msgspec.convert(trial, kind, strict=True)
        except msgspec.ValidationError as exc:
            if str(exc) == message:
                return (key,)
    return ("...",)


def _at(data: Any, steps: list[Any]) -> tuple[Any, bool]:
    for step in steps:
        key = step[0] if isinstance(step, tuple) else step
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None, False
    return data, True


def read(kind: type[R], path: str) -> R:
    """The ``kind`` record in the file at ``path``; ``FileNotFoundError`` if
    there is none, :class:`RecordError` if it cannot be read or decoded."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RecordError(path, "", f"cannot be read ({exc.strerror or exc})") from None
    return decode(kind, data, path)
