"""The codec of every on-disk record (``store/codec.py``): each kind reads back as
written, a damaged field is named by its path and file, and ``stitch inspect``
checks saved forwards' records."""

from __future__ import annotations

import ast
import io
import pprint
from pathlib import Path
from typing import Any

import msgspec
import pytest

from stitch.runtime.cli.inspect_job import inspect_cache
from stitch.runtime.store import codec
from stitch.runtime.store.artifacts import ArtifactIdentity
from stitch.runtime.store.codec import RecordError, StaleRecord
from stitch.runtime.store.extras import ExtraFile, ExtrasRecord
from stitch.runtime.store.files import make_private_dirs
from stitch.runtime.store.index import (
    EntryIdentity,
    EntryRecord,
    Index,
    PieceRecord,
    SourceRecord,
)
from stitch.runtime.store.location import aot_folder, aot_record_file
from stitch.runtime.store.records import (
    AOTRecord,
    PrebuiltRecord,
    Reference,
    SavedDynamicInput,
    SavedFunction,
    SavedGraphPlan,
    SavedGraphs,
    SavedSignature,
    SignaturesRecord,
)

KEY = "0123456789abcdef01234567"
SHA = "a" * 64

RECORDS = {
    "index": Index(
        EntryIdentity("0.1.0", "2.13.0", "c" * 64, "g" * 64, "inductor"),
        SourceRecord("execution_fn.py", SHA, ("submod_0",), None),
        {
            "submod_0": PieceRecord(
                "layers.0", 0, (EntryRecord("general", KEY, True),), ()
            )
        },
        ("Eq(s27, 7)",),
    ),
    "artifact": ArtifactIdentity(
        "inductor", "c" * 64, SHA, ("a",), "size8", KEY, 0, True, "b" * 64
    ),
    "extras": ExtrasRecord(KEY, SHA, {"prebuilt/a.prebuilt": ExtraFile(3, SHA)}),
    "aot": AOTRecord(
        model="m.Model",
        factors={"torch": "2.13.0"},
        code=(("m", "/m.py", SHA),),
        function=SavedFunction(
            "id", {"x": "m"}, ("len",), (1, (2, 3)), None, True, SHA
        ),
        stitched={"entry": "k/rank_0", "cache_root": "/c", "format": 1},
        torch_function_sha256=None,
    ),
    "reference": Reference(
        cache_root="/c",
        entry="k/rank_0",
        backend="inductor",
        targets={"compile_sizes": [4]},
        consts=({"dtype": "float32"}, {"literal": "(1, 2)"}),
        imports=(),
        cudagraphs=SavedGraphs(
            {"cudagraph_mode": "PIECEWISE"},
            SavedGraphPlan(
                0,
                (0,),
                (SavedDynamicInput(1, "positions", (), "int64", "cpu", -1),),
                (True,),
                False,
                2,
            ),
        ),
        index_sha256=SHA,
    ),
    "prebuilt": PrebuiltRecord(
        artifact_sha256=SHA,
        machine="x86_64 avx2",
        torch_version="2.13.0",
        increment_version=(1,),
        extern_kernels={"mm": "torch.ops.aten.mm"},
        kernels={"k" * 64: SHA},
        wrapper="def call(args):\n    return args\n",
    ),
    "signatures": SignaturesRecord(
        forward="m.Model.forward",
        params=("self", "x"),
        dims=((0,),),
        signatures=(SavedSignature("", ({"kind": "tensor", "name": "x"},)),),
        rejected={"abc": "x: expected 2 dims"},
        check_sha256=SHA,
        keywords=("cache",),
    ),
}


@pytest.mark.parametrize("kind", list(RECORDS))
def test_a_record_of_each_kind_reads_back_as_written(kind: str) -> None:
    record = RECORDS[kind]
    assert codec.decode(type(record), codec.encode(record), "f.py") == record


def test_a_damaged_field_is_named_by_its_path_and_file() -> None:
    data = ast.literal_eval(codec.render(RECORDS["index"]))
    data["pieces"]["submod_0"]["entries"] = [
        {"target": "general", "key": 7, "saved": True}
    ]
    with pytest.raises(RecordError) as info:
        codec.decode(Index, pprint.pformat(data), "/c/index.py")
    assert info.value.path == "/c/index.py"
    assert info.value.field == "pieces['submod_0'].entries[0].key"
    assert str(info.value).startswith(
        "/c/index.py: field pieces['submod_0'].entries[0].key: expected str"
    )


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d.update(entry="../elsewhere"), "entry"),
        (lambda d: d["consts"][0].update(tensor="x"), "consts[0]"),
        (
            lambda d: d["cudagraphs"]["plan"]["dynamic"][0].update(rest=[-1]),
            "cudagraphs.plan.dynamic[0].rest[0]",
        ),
        (lambda d: d["cudagraphs"]["plan"].update(last=-2), "cudagraphs.plan.last"),
    ],
)
def test_a_damaged_reference_names_the_field(change: Any, field: str) -> None:
    data = ast.literal_eval(codec.render(RECORDS["reference"]))
    change(data)
    with pytest.raises(RecordError) as info:
        codec.decode(Reference, repr(data), "a saved Stitch function")
    assert info.value.field.startswith(field), str(info.value)


def test_a_dict_key_is_named_in_the_path() -> None:
    data = ast.literal_eval(codec.render(RECORDS["extras"]))
    data["files"]["prebuilt/b.so"] = {"size": -1, "sha256": SHA}
    body = {k: v for k, v in data.items() if k not in ("kind", "version", "check")}
    with pytest.raises(RecordError) as info:
        codec.convert(ExtrasRecord, body, "/c/extras.py")
    assert info.value.field == "files['prebuilt/b.so'].size"


@pytest.mark.parametrize(
    "change, field",
    [({"version": 1}, "version"), ({"kind": "index"}, "kind")],
)
def test_another_version_or_kind_is_stale(change: dict[str, Any], field: str) -> None:
    data = {**codec.to_literal(RECORDS["aot"]), **change}
    with pytest.raises(StaleRecord) as info:
        codec.decode(AOTRecord, repr(data), "function.py")
    assert info.value.field == field


def test_an_edited_sealed_record_fails_its_check() -> None:
    text = codec.render(RECORDS["artifact"]).replace("'size8'", "'size9'")
    with pytest.raises(RecordError, match="field check: does not match"):
        codec.decode(ArtifactIdentity, text, "identity.py")


def test_inspect_reports_a_broken_saved_forward(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    folder = Path(aot_folder(str(root), "k" * 24, 0))
    make_private_dirs(str(folder), str(root))
    path = Path(aot_record_file(str(folder)))
    path.write_bytes(codec.encode(RECORDS["aot"]))
    path.chmod(0o600)
    (folder / "forward.bytecode").write_bytes(b"x")
    (folder / "forward.bytecode").chmod(0o600)
    out = io.StringIO()
    assert inspect_cache(str(root), out) == 1  # the bytecode is not what it records
    assert "forward.bytecode: sha256" in out.getvalue()

    data = ast.literal_eval(path.read_text())
    data["function"]["light"] = "yes"
    path.write_text(pprint.pformat(data))
    out = io.StringIO()
    assert inspect_cache(str(root), out) == 1
    assert f"{path}: field function.light: expected bool" in out.getvalue()


def test_inspect_checks_the_reference_and_signatures_a_saved_forward_holds(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cache"
    folder = Path(aot_folder(str(root), "k" * 24, 0))
    make_private_dirs(str(folder), str(root))
    path = Path(aot_record_file(str(folder)))
    reference = codec.to_literal(RECORDS["reference"])
    aot = msgspec.structs.replace(
        RECORDS["aot"], stitched={**reference, "entry": "../../elsewhere"}
    )
    path.write_bytes(codec.encode(aot))
    path.chmod(0o600)
    (folder / "signatures.py").write_text("{'kind': 'signatures', 'version': 2}\n")
    (folder / "signatures.py").chmod(0o600)
    out = io.StringIO()
    assert inspect_cache(str(root), out) == 1
    text = out.getvalue()
    assert f"{path}: field stitched: field entry: expected str matching" in text
    assert f"{folder / 'signatures.py'}: field forward: is missing" in text
