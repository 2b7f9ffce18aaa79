"""Extra files of an artifact (prebuilt records and kernel libraries) are sealed like the artifact.

The store API (``store/extras.py``) on files of its own: what it writes, and
what it refuses to hand out.  Then the real thing: a cold process compiles a
model (real Inductor) and saves its pieces' prebuilt records and built kernels;
each fault below is injected into a copy of that cache, and a fresh warm
process must give exactly one warning naming the damaged file and the problem,
never load the damaged file (no planted code runs, no tampered library is
mapped), load that piece through Inductor instead, give the right outputs, and
leave the cache repaired: the process after it loads every piece prebuilt with
no warning, and ``stitch inspect`` finds the entry healthy.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from stitch.core.errors import StitchCacheError
from stitch.runtime.cli.inspect_job import inspect_cache
from stitch.runtime.pipeline.prebuilt.load import (
    PREBUILT_SUFFIX,
    read_record,
    render_record,
)
from stitch.runtime.store.artifacts import ARTIFACT_FILE, ARTIFACTS_DIR
from stitch.runtime.store.digests import file_hash
from stitch.runtime.store.extras import (
    EXTRAS_FILE,
    ExtraFileError,
    NoExtras,
    open_extras,
    save_extras,
)
from stitch.runtime.store.files import make_private_dirs
from stitch.runtime.store.trust import StitchCacheTrustError

from aot_support import MODEL_SOURCE, PIECES, SIZES, run_worker
from backend_support import INDUCTOR_TOL

KEY = "0123456789abcdef01234567"


# -- the store API -------------------------------------------------------------------------


@pytest.fixture
def artifact(tmp_path: Path) -> tuple[Path, str]:
    """An artifact laid out as the cache lays it out: ``<root>/<entry key>/rank_0/artifacts/<key>/``."""
    root = tmp_path / "root"
    folder = root / "entrykey" / "rank_0" / ARTIFACTS_DIR / KEY
    make_private_dirs(str(folder), str(root))
    path = folder / ARTIFACT_FILE
    path.write_bytes(b"the artifact")
    os.chmod(path, 0o600)
    return path, file_hash(str(path))


FILES = {
    "prebuilt/a.prebuilt": b"record " * 100,
    "prebuilt/kernels/k.so": b"\x7fELF" * 64,
}


def test_saved_files_read_back_verified(artifact: tuple[Path, str]) -> None:
    path, sha = artifact
    listed = save_extras(str(path), sha, FILES)
    assert listed == str(path.parent / EXTRAS_FILE)
    entry = path.parent.parent.parent
    extras = open_extras(str(path), sha)
    for name, data in FILES.items():
        assert extras.read(name) == data
        assert extras.verified_path(name) == str(entry / name)
        # Private, like every file of the cache.
        assert stat.S_IMODE(os.stat(entry / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(entry / "prebuilt" / "kernels").st_mode) == 0o700


def test_saving_again_keeps_a_whole_file_and_replaces_a_changed_one(
    artifact: tuple[Path, str],
) -> None:
    path, sha = artifact
    save_extras(str(path), sha, FILES)
    entry = path.parent.parent.parent
    record, kernel = entry / "prebuilt/a.prebuilt", entry / "prebuilt/kernels/k.so"
    inode = record.stat().st_ino
    kernel.write_bytes(b"changed")
    save_extras(str(path), sha, FILES)
    assert record.stat().st_ino == inode  # whole: not rewritten
    assert kernel.read_bytes() == FILES["prebuilt/kernels/k.so"]
    open_extras(str(path), sha).verified_path("prebuilt/kernels/k.so")


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "changed": (flip, "its record says"),
    "truncated": (truncate, "(truncated or changed)"),
    "missing": (Path.unlink, "is missing"),
}


@pytest.mark.parametrize("how", list(BREAKS))
@pytest.mark.parametrize("name", list(FILES))
def test_a_damaged_file_is_refused_naming_it(
    artifact: tuple[Path, str], name: str, how: str
) -> None:
    path, sha = artifact
    save_extras(str(path), sha, FILES)
    target = path.parent.parent.parent / name
    breaker, says = BREAKS[how]
    breaker(target)
    extras = open_extras(str(path), sha)
    for use in (extras.read, extras.verified_path):
        with pytest.raises(ExtraFileError) as info:
            use(name)
        assert info.value.path == str(target)
        assert str(target) in str(info.value) and says in str(info.value)
    if how == "changed":
        assert "sha256" in str(info.value)


def test_an_unlisted_file_is_refused(artifact: tuple[Path, str]) -> None:
    path, sha = artifact
    save_extras(str(path), sha, FILES)
    extra = path.parent.parent.parent / "prebuilt/kernels/other.so"
    extra.write_bytes(b"planted")
    with pytest.raises(
        ExtraFileError, match=r"other\.so: is not listed in .*extras\.py"
    ):
        open_extras(str(path), sha).verified_path("prebuilt/kernels/other.so")


def test_the_list_is_checked(artifact: tuple[Path, str]) -> None:
    path, sha = artifact
    with pytest.raises(NoExtras):
        open_extras(str(path), sha)
    listed = Path(save_extras(str(path), sha, FILES))
    # Made from this artifact's bytes: an artifact rewritten since has none.
    with pytest.raises(NoExtras, match="made for another version of the artifact"):
        open_extras(str(path), "0" * 64)
    # An edit shows in its checksum, whatever it changed.
    text = listed.read_text()
    sizes = {name: len(data) for name, data in FILES.items()}
    listed.write_text(
        text.replace(f"'size': {sizes['prebuilt/a.prebuilt']}", "'size': 1")
    )
    with pytest.raises(
        ExtraFileError, match=r"extras\.py: field check: does not match"
    ):
        open_extras(str(path), sha)
    listed.write_text("__import__('os').system('false')\n")
    with pytest.raises(ExtraFileError, match="is not a Python literal"):
        open_extras(str(path), sha)


def test_only_plain_names_under_prebuilt_are_written(
    artifact: tuple[Path, str],
) -> None:
    path, sha = artifact
    for bad in (
        "../escape.so",
        "prebuilt/../../x",
        "other/k.so",
        "prebuilt/.hidden",
        "/abs",
    ):
        with pytest.raises(StitchCacheError, match="plain paths under prebuilt/"):
            save_extras(str(path), sha, {bad: b"x"})


def test_a_file_others_can_write_is_refused(artifact: tuple[Path, str]) -> None:
    path, sha = artifact
    save_extras(str(path), sha, FILES)
    kernel = path.parent.parent.parent / "prebuilt/kernels/k.so"
    os.chmod(kernel, 0o666)
    with pytest.raises(
        StitchCacheTrustError, match=r"k\.so is writable by its group and all users"
    ):
        open_extras(str(path), sha).verified_path("prebuilt/kernels/k.so")


# -- a real cache: tampered prebuilt files in a warm process ----------------------------------


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("extras")
    model_file = tmp / "aot_test_model.py"
    model_file.write_text(MODEL_SOURCE)
    spec = {
        "model_file": str(model_file),
        "cache_dir": str(tmp / "cache"),
        "sizes": SIZES,
    }
    report = run_worker({**spec, "outputs": str(tmp / "cold.pt")})
    assert (
        report["warnings"] == []
        and report["counter"]["num_inductor_compiles"] == PIECES
    )
    entry = Path(report["entry"])
    return {
        "tmp": tmp,
        "spec": spec,
        "entry": entry.relative_to(tmp / "cache"),
        "outputs": torch.load(tmp / "cold.pt"),
    }


def plant_code(record: Path, marker: Path) -> None:
    """Code added to the wrapper, the record's own digest redone: only the list can tell."""
    data = read_record(str(record))
    plant = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')\n"
    data["wrapper"] = plant + data["wrapper"]
    record.write_text(render_record(data))


def edit_list(entry: Path) -> Path:
    key = first_record(entry).name.removesuffix(PREBUILT_SUFFIX)
    listed = entry / ARTIFACTS_DIR / key / EXTRAS_FILE
    listed.write_text(listed.read_text().replace("'size': ", "'size': 1", 1))
    return listed


def first_record(entry: Path) -> Path:
    return sorted((entry / "prebuilt").glob(f"*{PREBUILT_SUFFIX}"))[0]


def first_kernel(entry: Path) -> Path:
    return sorted((entry / "prebuilt" / "kernels").glob("*.so"))[0]


def _kernel(how: str) -> Callable[[Path, Path], Path]:
    def inject(entry: Path, marker: Path) -> Path:
        path = first_kernel(entry)
        BREAKS[how][0](path)
        return path

    return inject


def _planted(entry: Path, marker: Path) -> Path:
    path = first_record(entry)
    plant_code(path, marker)
    return path


# fault -> (injector, what the warning says).  One per kind of file a warm
# process loads (a kernel library, a prebuilt record, the list itself): every
# way of damaging each file (changed, truncated, missing) is refused in
# test_a_damaged_file_is_refused_naming_it; these check the whole path in
# fresh processes (two each), so they are kept to one per kind.
FAULTS: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "kernel-changed": (_kernel("changed"), "sha256"),
    "wrapper-code-planted": (_planted, "its record says"),
    "list-edited": (lambda entry, marker: edit_list(entry), "field check"),
}


def inspect(root: Path) -> tuple[int, str]:
    out = io.StringIO()
    return inspect_cache(str(root), out), out.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_damaged_prebuilt_file_one_warning_fallback_and_repair(
    fault: str, cold: dict[str, Any], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    shutil.copytree(cold["tmp"] / "cache", root)
    entry = root / cold["entry"]
    marker = tmp_path / "planted-code-ran"
    inject, says = FAULTS[fault]
    broken = inject(entry, marker)
    spec = {**cold["spec"], "cache_dir": str(root), "outputs": str(tmp_path / "out.pt")}

    status, text = inspect(root)
    assert status == 1 and str(broken) in text, text

    warm = run_worker(spec)
    assert warm["warm"] is True
    (warning,) = warm["warnings"]
    assert str(broken) in warning and says in warning, warning
    assert "loading that piece through Inductor" in warning
    assert warm["counter"]["num_cache_faults"] == 1
    # The damaged piece went through Inductor; the other loaded prebuilt.
    assert warm["counter"]["num_prebuilt_loads"] == PIECES - 1
    assert warm["counter"]["num_compiled_artifacts_loaded"] == PIECES
    assert warm["counter"].get("num_inductor_compiles", 0) == 0
    assert not marker.exists(), "code planted in a prebuilt record ran"
    assert str(broken) not in warm["mapped"], "a damaged kernel library was loaded"
    outputs = torch.load(tmp_path / "out.pt")
    for n in SIZES:
        torch.testing.assert_close(outputs[n], cold["outputs"][n], rtol=0, atol=1e-6)
    assert max(warm["diffs"].values()) < INDUCTOR_TOL["atol"]

    # The Inductor load wrote the piece's prebuilt files again: repaired.
    again = run_worker(spec, tmp_path / "inductor-empty")
    assert again["warnings"] == []
    assert again["counter"]["num_prebuilt_loads"] == PIECES
    assert not again["counter"].get("num_cache_faults")
    assert again["mapped"], "the kernels were loaded from the cache"
    status, text = inspect(root)
    assert status == 0, text
