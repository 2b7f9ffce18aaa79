"""The typed index: every record that does not validate is one problem naming its field.

Unit tests parse mutated copies of a real index; end-to-end tests put the worst
of them in a cache entry the eager backend uses (no Inductor needed: what is
checked is reading the index) and ``stitch inspect`` on each mutation.
"""

from __future__ import annotations

import ast
import io
import logging
import pprint
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from stitch.runtime import CompilationConfig
from stitch.runtime.cli.inspect_job import inspect_cache
from stitch.runtime.store.index import (
    INDEX_FILE,
    INDEX_FORMAT,
    EntryIdentity,
    EntryRecord,
    Index,
    PieceRecord,
    SourceRecord,
    parse_index,
)

from backend_support import (
    INDUCTOR_TOL,
    TINY,
    compile_model,
    counting,
    eager_and_compiled,
    model_for,
    stitch_warnings,
)

# See NOTE: [many compiles of one forward] in conftest.py.
pytestmark = pytest.mark.usefixtures("dynamo_state")

IDENTITY = EntryIdentity("0.1.0", "2.13.0", "c" * 64, "g" * 64, "inductor")
CONFIG = {"backend": "eager", "compile_sizes": [4], "max_num_batched_tokens": 32}


def sample() -> Index:
    entries = (
        EntryRecord("general", "0123456789abcdef01234567", True),
        EntryRecord(
            "size4", "89abcdef0123456789abcdef", False, "the compiler could not save it"
        ),
    )
    return Index(
        IDENTITY,
        SourceRecord("execution_fn.py", "a" * 64, ("submod_0", "submod_1"), "s72"),
        {
            "submod_0": PieceRecord(
                "embed_tokens .. layers.0", 1, entries, ((0, (0, 2, 1, 3)),)
            )
        },
    )


def test_an_index_reads_back_as_written() -> None:
    read = parse_index(sample().render(), IDENTITY)
    assert read.problems == []
    assert read.index == sample()


def editable(data: Any) -> Any:
    """A record's literal with its tuples as lists (so a test can change them)."""
    if isinstance(data, dict):
        return {k: editable(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [editable(v) for v in data]
    return data


def set_path(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    for step in path[:-1]:
        data = data[step]
    if value is DELETE:
        del data[path[-1]]
    else:
        data[path[-1]] = value


DELETE = object()

# mutation -> (path into the literal, new value, field the problem names, whole index lost)
MUTATIONS: dict[str, tuple[tuple[Any, ...], Any, str, bool]] = {
    "source-int": (
        ("source",),
        7,
        "field source: expected object | null, got int (7)",
        False,
    ),
    "source-sha-short": (
        ("source", "sha256"),
        "abc",
        "field source.sha256: expected str matching regex",
        False,
    ),
    "source-file-elsewhere": (
        ("source", "file"),
        "../../x.py",
        "field source.file: invalid enum value '../../x.py'",
        False,
    ),
    "source-names-int": (
        ("source", "submod_names"),
        [1],
        "field source.submod_names[0]: expected str, got int (1)",
        False,
    ),
    "piece-int": (
        ("pieces", "submod_0"),
        5,
        "field pieces['submod_0']: expected object, got int (5)",
        False,
    ),
    "entries-none": (
        ("pieces", "submod_0", "entries"),
        None,
        "entries: expected array, got null (None)",
        False,
    ),
    "entries-empty": (
        ("pieces", "submod_0", "entries"),
        [],
        "entries: expected array of length >= 1 ([])",
        False,
    ),
    "entry-int": (
        ("pieces", "submod_0", "entries", 0),
        3,
        "entries[0]: expected object, got int (3)",
        False,
    ),
    "entry-key-escapes": (
        ("pieces", "submod_0", "entries", 0, "key"),
        "../../etc",
        "entries[0].key: expected str matching regex '^[0-9a-f]{8,64}$' ('../../etc')",
        False,
    ),
    "entry-target-unknown": (
        ("pieces", "submod_0", "entries", 1, "target"),
        "size-4",
        "entries[1].target: expected str matching regex",
        False,
    ),
    "entry-saved-str": (
        ("pieces", "submod_0", "entries", 0, "saved"),
        "yes",
        "entries[0].saved: expected bool, got str ('yes')",
        False,
    ),
    "entry-key-missing": (
        ("pieces", "submod_0", "entries", 0, "key"),
        DELETE,
        "entries[0].key: is missing",
        False,
    ),
    "sym-index-str": (
        ("pieces", "submod_0", "size_index"),
        "1",
        "size_index: expected int | null, got str ('1')",
        False,
    ),
    "sym-index-bool": (
        ("pieces", "submod_0", "size_index"),
        True,
        "size_index: expected int | null, got bool (True)",
        False,
    ),
    "sym-index-negative": (
        ("pieces", "submod_0", "size_index"),
        -1,
        "size_index: expected int >= 0 (-1)",
        False,
    ),
    "module-path-none": (
        ("pieces", "submod_0", "module_path"),
        None,
        "module_path: expected str, got null (None)",
        False,
    ),
    "layouts-missing": (
        ("pieces", "submod_0", "layouts"),
        DELETE,
        "layouts: is missing",
        False,
    ),
    "layouts-not-an-order": (
        ("pieces", "submod_0", "layouts", 0, 1),
        [0, 2, 2, 3],
        "argument 0's dims [0, 2, 2, 3] are not an order",
        False,
    ),
    "pieces-none": (
        ("pieces",),
        None,
        "field pieces: expected object, got null (None)",
        True,
    ),
    "format-str": (("version",), "2", "field version: is '2', expected 6", True),
    "format-old": (("version",), 1, "field version: is 1, expected 6", True),
    "graph-key-other": (
        ("identity", "graph_key"),
        "h" * 64,
        "field identity.graph_key: is 'hhhh",
        True,
    ),
    "config-hash-missing": (
        ("identity", "config_hash"),
        DELETE,
        "field identity.config_hash: is missing",
        True,
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_record_that_does_not_validate_is_one_problem_naming_its_field(
    mutation: str,
) -> None:
    path, value, says, whole = MUTATIONS[mutation]
    data = editable(ast.literal_eval(sample().render()))
    set_path(data, path, value)
    read = parse_index(pprint.pformat(data), IDENTITY)
    assert len(read.problems) == 1, read.problems
    assert says in read.problems[0]
    if whole:
        assert read.index is None
    else:
        # Only the broken record is dropped: the other one survives.
        assert read.index is not None
        kept = {
            "source": read.index.source is not None,
            "pieces": bool(read.index.pieces),
        }
        assert kept == {"source": path[0] != "source", "pieces": path[0] != "pieces"}


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "not a Python literal"),
        ("{'format': 2", "not a Python literal"),
        ("[1, 2]", "holds list"),
        ("__import__('os').system('false')", "not a Python literal"),
        ("[" * 100_000 + "]" * 100_000, "not a Python literal"),
        (
            "{'kind': 'index', 'version': %d}" % INDEX_FORMAT,
            "field identity: is missing",
        ),
    ],
    ids=["empty", "truncated", "list", "code", "deep", "no-identity"],
)
def test_an_index_that_is_not_one_is_one_problem(text: str, says: str) -> None:
    read = parse_index(text, IDENTITY)
    assert read.index is None
    assert len(read.problems) == 1 and says in read.problems[0], read.problems


# -- end to end: the eager backend reads a broken index ------------------------------------


def compile_eager(
    root: Path, caplog: pytest.LogCaptureFixture
) -> tuple[Any, list[str]]:
    caplog.clear()
    model = model_for(TINY)
    be, fn = compile_model(model, CompilationConfig(cache_dir=str(root), **CONFIG))
    with caplog.at_level(logging.WARNING, logger="stitch"), counting():
        for n in (8, 4):
            ref, out = eager_and_compiled(model, fn, TINY, n)
            torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    return be, stitch_warnings(caplog)


@pytest.fixture(scope="module")
def eager_entry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eager")
    model = model_for(TINY)
    be, fn = compile_model(model, CompilationConfig(cache_dir=str(root), **CONFIG))
    eager_and_compiled(model, fn, TINY, 8)
    return root, Path(be.compiled[0].cache_dir).relative_to(root)


def breaks(value: Any, *path: Any) -> Callable[[dict[str, Any]], None]:
    return lambda data: set_path(data, path, value)


# The types the issue saw crash every run until the cache was deleted by hand.
BROKEN_INDEXES = {
    "source-int": breaks(7, "source"),
    "piece-int": breaks(5, "pieces", "submod_2"),
    "entries-none": breaks(None, "pieces", "submod_2", "entries"),
    "pieces-none": breaks(None, "pieces"),
}


@pytest.mark.slow
@pytest.mark.parametrize("broken", list(BROKEN_INDEXES))
def test_a_run_survives_an_index_of_wrong_types(
    broken: str,
    eager_entry: tuple[Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "cache"
    shutil.copytree(eager_entry[0], root)
    index_path = root / eager_entry[1] / INDEX_FILE
    data = editable(ast.literal_eval(index_path.read_text()))
    BROKEN_INDEXES[broken](data)
    index_path.write_text(pprint.pformat(data))

    out = io.StringIO()
    assert inspect_cache(str(root), out) == 1
    assert str(index_path) in out.getvalue()

    _, warnings = compile_eager(root, caplog)
    assert len(warnings) == 1, warnings
    assert str(index_path) in warnings[0] and "field" in warnings[0]
    # Rebuilt: valid again, and the next run is quiet.
    assert parse_index(index_path.read_text(), None).problems == []
    _, warnings = compile_eager(root, caplog)
    assert warnings == []
    out = io.StringIO()
    assert inspect_cache(str(root), out) == 0, out.getvalue()
