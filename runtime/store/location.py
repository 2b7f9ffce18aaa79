"""Where everything in the cache lives: the root, entry folders, and every file's path.

NOTE: [every cache path comes from here]
A compile cache entry is ``<root>/<entry key>/rank_<r>/`` holding ``index.py``,
``index.lock``, ``execution_fn.py``, ``artifacts/<key>/{artifact.bin,
identity.py, extras.py}`` and ``prebuilt/``; a saved forward's record is
``<root>/aot/<model key>/rank_<r>/function.py``.  The functions below are the
only code that joins these names, so a layout change is made here alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from platformdirs import user_cache_dir

from stitch.core.contract import FORMAT_VERSION

from ..settings import CacheSettings
from .digests import key_hash
from .index import INDEX_FILE, INDEX_FORMAT, LOCK_FILE, SOURCE_FILE, EntryIdentity

CACHE_ENV = "STITCH_CACHE_DIR"
ARTIFACTS_DIR = "artifacts"
ARTIFACT_FILE = "artifact.bin"
IDENTITY_FILE = "identity.py"
EXTRAS_FILE = "extras.py"
# Beside the artifacts: what the pipeline prebuilt from them (wrapper records
# and built kernels), so a load needs no kernel build (pipeline/prebuilt/load.py).
# What the entry's key covers, readable (explain.py): "why did this not start warm?"
FACTORS_FILE = "factors.py"
# Why warm loads of the entry failed and compiled instead (load_failures.py).
LOAD_FAILURES_FILE = "load_failures.py"
PREBUILT_DIR = "prebuilt"
PREBUILT_SUFFIX = ".prebuilt"
AOT_DIR = "aot"
# Beside the entries: the compiled Triton kernels of Stitch's own ops
# (``kernels/<op>/``, stitch.runtime.kernels.static_launch).
KERNELS_DIR = "kernels"
# The root's folders that are not compile cache entries.
SIDE_DIRS = (AOT_DIR, KERNELS_DIR)
AOT_RECORD_FILE = "function.py"
# The side files a saved forward's record names (runtime/saved/ writes them).
AOT_BYTECODE_FILE = "forward.bytecode"
AOT_TORCH_FILE = "torch_function.bin"
# A saved forward's input check, and the signatures it was generated from.
AOT_CHECK_FILE = "input_check.py"
AOT_SIGNATURES_FILE = "signatures.py"


def stitch_version() -> str:
    """The code that writes an entry: the package version and the format of the
    emitted source, so source emitted by an older code generator is not reused."""
    try:
        from importlib.metadata import version

        package = version("stitch")
    except Exception:  # noqa: BLE001 - running from a checkout without metadata
        package = "0+unknown"
    return f"{package}/emitted-format-{FORMAT_VERSION}"


def cache_root(settings: CacheSettings) -> str:
    """``config.cache_dir``, else ``$STITCH_CACHE_DIR``, else the user cache dir
    (``platformdirs``: ``$XDG_CACHE_HOME/stitch`` or ``~/.cache/stitch`` on Linux)."""
    if settings.cache_dir:
        return os.path.abspath(os.path.expanduser(settings.cache_dir))
    if os.environ.get(CACHE_ENV):
        return os.path.abspath(os.path.expanduser(os.environ[CACHE_ENV]))
    return user_cache_dir("stitch", appauthor=False)


def current_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


# NOTE: [ranks of one engine share a folder]
# An entry's folder is ``<root>/<entry key>/rank_<r>``.  By default the key
# covers the graph, so one graph's ranks share it.  The ranks of a tensor-
# parallel engine trace different graphs (each holds its own shard's sizes and
# offsets, such as a vocabulary-parallel embedding's first token id), which
# would put each rank's entry under a folder of its own.  An integration that
# knows what its ranks share (vLLM: the engine config's hash and the compiled
# module) names it as the entry's ``group``: the key then covers the group
# instead of the graph, so one model's cache is one folder with ``rank_<r>``
# below it, and each rank's index still records, and is checked against, its
# own graph key.


def entry_key(identity: EntryIdentity) -> str:
    """The folder name of the entry for ``identity`` (what its index must say)."""
    factors: tuple[object, ...] = (
        identity.config_hash,
        identity.torch_version,
        identity.group or identity.graph_key,
        identity.stitch_version,
        identity.backend,
        INDEX_FORMAT,
    )
    if identity.group:
        factors += ("group",)
    return key_hash(*factors)


# -- a compile cache entry ------------------------------------------------------------


def entry_dir(root: str, identity: EntryIdentity, rank: int | None = None) -> str:
    """``<root>/<entry key>/rank_<r>`` (``r``: this process's rank by default)."""
    rank = current_rank() if rank is None else rank
    return os.path.join(root, entry_key(identity), f"rank_{rank}")


def root_of_entry(entry: str) -> str:
    """The cache root of an entry folder (``<root>/<entry key>/rank_<r>``)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(entry)))


def entry_folder_key(entry: str) -> str:
    """The entry key an entry folder is filed under."""
    return os.path.basename(os.path.dirname(os.path.abspath(entry)))


def entry_folders(root: str) -> Iterator[str]:
    """The entry folders (``<root>/<entry key>/rank_<r>``) under ``root``, the
    saved forwards' ``aot/`` and the ops' ``kernels/`` left out.  ``root`` is listed by this call (an
    unlistable root raises ``OSError`` here), each key folder as it is reached."""
    keys = os.listdir(root)
    return (
        os.path.join(root, key, rank)
        for key in keys
        if key not in SIDE_DIRS and os.path.isdir(os.path.join(root, key))
        for rank in os.listdir(os.path.join(root, key))
    )


def index_file(entry: str) -> str:
    return os.path.join(entry, INDEX_FILE)


def lock_file(entry: str) -> str:
    return os.path.join(entry, LOCK_FILE)


def source_file(entry: str) -> str:
    return os.path.join(entry, SOURCE_FILE)


def factors_file(entry: str) -> str:
    """``<entry>/factors.py``: what the entry's key covers (``explain.py``)."""
    return os.path.join(entry, FACTORS_FILE)


def load_failures_file(entry: str) -> str:
    """``<entry>/load_failures.py``: why warm loads of it failed (``load_failures.py``)."""
    return os.path.join(entry, LOAD_FAILURES_FILE)


def entry_of_artifact(path: str) -> str:
    """The entry folder of an artifact file (``<entry>/artifacts/<key>/<file>``)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(path)))


def artifacts_dir(entry: str) -> str:
    return os.path.join(entry, ARTIFACTS_DIR)


def artifact_folder(entry: str, key: str) -> str:
    """``<entry>/artifacts/<key>``: one sealed folder per compile key."""
    return artifact_folder_in(artifacts_dir(entry), key)


def artifact_folder_in(artifacts: str, key: str) -> str:
    """``<artifacts>/<key>``: the sealed folder of ``key`` in an entry's
    ``artifacts`` folder (the path :func:`artifacts_dir` gives)."""
    return os.path.join(artifacts, key)


def artifact_trash_folder(artifacts: str, token: str) -> str:
    """``<artifacts>/.trash-<token>``: where a broken folder goes before it is removed."""
    return os.path.join(artifacts, f".trash-{token}")


def artifact_file(folder: str) -> str:
    return os.path.join(folder, ARTIFACT_FILE)


def identity_file(folder: str) -> str:
    return os.path.join(folder, IDENTITY_FILE)


def extras_file(folder: str) -> str:
    return os.path.join(folder, EXTRAS_FILE)


def locate_artifact(artifact_path: str) -> tuple[str, str, str]:
    """``(cache root, entry folder, compile key)`` of ``<entry>/artifacts/<key>/artifact.bin``."""
    folder = os.path.dirname(os.path.abspath(artifact_path))
    entry = os.path.dirname(os.path.dirname(folder))
    return root_of_entry(entry), entry, os.path.basename(folder)


def extra_path(entry: str, name: str) -> str:
    """The path of an extra file named ``prebuilt/...`` (``/``-separated) in ``entry``."""
    return os.path.join(entry, *name.split("/"))


def prebuilt_dir(entry: str) -> str:
    return os.path.join(entry, PREBUILT_DIR)


def prebuilt_name(key: str) -> str:
    """A piece's prebuilt record as an extra file: ``prebuilt/<key>.prebuilt``."""
    return f"{PREBUILT_DIR}/{key}{PREBUILT_SUFFIX}"


# -- saved forwards ------------------------------------------------------------------


def aot_folder(root: str, model_key: str, rank: int | None = None) -> str:
    """``<root>/aot/<model key>/rank_<r>``: one saved forward per model and rank."""
    rank = current_rank() if rank is None else rank
    return os.path.join(root, AOT_DIR, model_key, f"rank_{rank}")


def root_of_aot(folder: str) -> str:
    """The cache root of a saved forward's folder (``<root>/aot/<model key>/rank_<r>``)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(folder))))


def find_aot_folders(path: str) -> list[str]:
    """Saved forwards' folders (those holding ``function.py``) at or under ``path``."""
    found = []
    for directory, dirs, files in os.walk(path):
        dirs.sort()
        if AOT_RECORD_FILE in files:
            found.append(directory)
    return found


def aot_signature_folder(folder: str, shape: str) -> str:
    """The folder of a later signature's saved forward, beside the first one's
    (``<first folder>.sig_<shape key>``)."""
    return f"{folder}.sig_{shape}"


def aot_sibling(folder: str, name: str) -> str:
    """The saved-forward folder ``name`` (as the signatures file records it)
    beside ``folder``."""
    return os.path.join(os.path.dirname(folder), name)


def aot_record_file(folder: str) -> str:
    return os.path.join(folder, AOT_RECORD_FILE)


def aot_check_file(folder: str) -> str:
    """The input check emitted beside a saved forward's record."""
    return os.path.join(folder, AOT_CHECK_FILE)


def aot_signatures_file(folder: str) -> str:
    """The signatures the input check beside a saved forward was generated from."""
    return os.path.join(folder, AOT_SIGNATURES_FILE)


def aot_side_file(folder: str, name: str) -> str:
    """A file a saved forward's record names beside it (bytecode, torch's bytes)."""
    return os.path.join(folder, name)


def reference_entry(root: str, entry: str) -> str:
    """The entry folder a saved reference names (``entry``: relative, ``/``-separated)."""
    return os.path.join(os.path.abspath(os.path.expanduser(root)), *entry.split("/"))


def reference_name(root: str, entry: str) -> str:
    """What a saved reference records for ``entry`` under ``root``."""
    return os.path.relpath(entry, root).replace(os.sep, "/")


# -- the ops' compiled kernels ------------------------------------------------------

# NOTE: [the root Stitch's ops keep their kernels under]
# Stitch's own ops (``stitch::attention``) run outside any entry, so they have
# no config to ask for a cache root.  The first entry this process opens
# (``CompileCache.open`` or ``existing``: a compile, a load, a saved forward's
# pieces) names the root; its ``kernels/`` then holds the ops' compiled
# kernels.  Before that, and in a process that opens none, the ops keep and
# find nothing.
_kernel_root: list[str] = []


def note_cache_root(root: str) -> None:
    """Record ``root`` as where the ops keep their kernels (the first noted wins)."""
    if not _kernel_root:
        _kernel_root.append(os.path.abspath(root))


def kernel_root() -> str | None:
    """The cache root the ops keep their kernels under (NOTE above), or None."""
    return _kernel_root[0] if _kernel_root else None


def kernel_folder(root: str, op: str) -> str:
    """``<root>/kernels/<op>``, ``op``'s ``::`` written ``.`` (``stitch.attention``)."""
    return os.path.join(root, KERNELS_DIR, op.replace("::", "."))


def kernel_record_file(folder: str, name: str) -> str:
    return os.path.join(folder, f"{name}.kernel")


def kernel_cubin_file(folder: str, sha256: str) -> str:
    return os.path.join(folder, f"{sha256}.cubin")
