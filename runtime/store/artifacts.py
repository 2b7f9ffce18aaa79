"""A piece's compiled artifact on disk: its identity (which graph, which
compile), written beside it and checked before it is loaded, and publishing a
finished artifact into the cache atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import tempfile
import uuid
from collections.abc import Callable

import torch.fx as fx

from stitch.codegen.fingerprint import (
    describe_example,
    example_value,
    string_constants,
    structural_hash,
)

from . import codec
from .codec import Record, RecordError, short
from .digests import content_hash, file_hash
from .files import PRIVATE_FILE, atomic_write, fsync_dir, fsync_file, remove_tree
from .index import Count, Key, Sha256, TargetKey
from .location import (
    ARTIFACT_FILE,
    ARTIFACTS_DIR,
    IDENTITY_FILE,
    PREBUILT_DIR,
    artifact_file,
    artifact_folder_in,
    artifact_trash_folder,
    identity_file,
)

__all__ = ["ARTIFACTS_DIR", "ARTIFACT_FILE", "IDENTITY_FILE", "PREBUILT_DIR"]

# 2: the runtime-size argument is "size_index" (was "sym_index").
# 3: the codec's envelope (kind, version).
ARTIFACT_FORMAT = 3


@dataclasses.dataclass(frozen=True)
class PieceIdentity:
    """What a piece is, from its graph alone (no fake propagation needed).

    ``piece_hash`` is its structural hash with string constants abstracted (so
    repeated pieces that differ only in layer names agree), including the example
    metadata Dynamo left on its placeholders (dtypes, shapes, symbolic sizes).
    """

    piece_hash: str
    strings: tuple[str, ...]

    @classmethod
    def of(cls, graph: fx.GraphModule) -> PieceIdentity:
        examples = [
            example_value(n) for n in graph.graph.nodes if n.op == "placeholder"
        ]
        text = structural_hash(graph, abstract_strings=True) + "".join(
            describe_example(v) for v in examples
        )
        return cls(content_hash(text.encode()), tuple(string_constants(graph)))


class ArtifactIdentity(Record, frozen=True):
    """What one artifact was compiled for, and the hash of its bytes (``identity.py``)."""

    KIND = "artifact"
    VERSION = ARTIFACT_FORMAT
    SEALED = True

    backend: str
    config_hash: str
    piece_hash: Sha256
    # The string constants the compiled code depends on; None when it depends on none.
    strings: tuple[str, ...] | None
    target: TargetKey
    key: Key
    size_index: Count | None
    unwrap: bool
    sha256: Sha256

    def render(self) -> str:
        return codec.render(self)

    @classmethod
    def parse(cls, text: str | bytes, path: str = IDENTITY_FILE) -> ArtifactIdentity:
        return codec.decode(cls, text, path)

    def mismatch(
        self,
        *,
        backend: str,
        config_hash: str,
        piece: PieceIdentity | None,
        target: str,
        key: str,
        size_index: int | None,
    ) -> str | None:
        """The first field that says this artifact is not for that use, described.

        ``piece`` None: no graph to compare with (a saved forward loads by its
        index, which the saved reference pins by hash); the rest is checked."""
        # See NOTE: [ranges share the general artifact] (pipeline/piece_plan.py): a
        # range records the general artifact's key, and that artifact serves it.
        if self.target == "general" and target.startswith("range"):
            target = "general"
        wanted = {
            "backend": backend,
            "config_hash": config_hash,
            "key": key,
            "target": target,
            "size_index": size_index,
        }
        if piece is not None:
            wanted["piece_hash"] = piece.piece_hash
        for name, want in wanted.items():
            if getattr(self, name) != want:
                return f"field {name} is {short(getattr(self, name))}, expected {short(want)}"
        if (
            piece is not None
            and self.strings is not None
            and self.strings != piece.strings
        ):
            ours = short(list(piece.strings))
            return (
                f"field strings is {short(list(self.strings))}, this piece's are {ours}"
            )
        return None


def read_identity(folder: str) -> ArtifactIdentity:
    """The identity of the artifact in ``folder``, its bytes checked against it.

    Raises :class:`~.codec.RecordError` (naming the file and field: the
    artifact's own file when its bytes do not hash to the record's sha256) or
    ``OSError``.
    """
    identity = codec.read(ArtifactIdentity, identity_file(folder))
    key = os.path.basename(os.path.abspath(folder))
    if identity.key != key:
        raise RecordError(
            identity_file(folder),
            "key",
            f"is {identity.key!r}, but the folder is {key!r}",
        )
    actual = file_hash(artifact_file(folder))
    if actual != identity.sha256:
        raise RecordError(
            artifact_file(folder),
            "",
            f"hashes to {actual[:12]}..., but field sha256 of {IDENTITY_FILE} says "
            f"{identity.sha256[:12]}...",
        )
    return identity


def publish(
    artifacts_dir: str,
    key: str,
    save: Callable[[str], None],
    identity_for: Callable[[str], ArtifactIdentity],
    *,
    replace: bool,
) -> ArtifactIdentity | None:
    """Save an artifact into ``artifacts_dir/<key>``; its identity, or None if another won.

    ``save(path)`` writes the artifact file; ``identity_for(sha256)`` describes
    it.  With ``replace``, a folder already there (known broken) is replaced;
    otherwise a folder already there was published by another process and is
    kept.
    """
    staging = tempfile.mkdtemp(prefix=".staging-", dir=artifacts_dir)
    try:
        payload = artifact_file(staging)
        save(payload)
        os.chmod(payload, PRIVATE_FILE)
        fsync_file(payload)
        identity = identity_for(file_hash(payload))
        atomic_write(identity_file(staging), codec.encode(identity))
        final = artifact_folder_in(artifacts_dir, key)
        try:
            os.rename(staging, final)
        except OSError as exc:
            # Something is in the way: a folder (EEXIST, ENOTEMPTY) or a file (ENOTDIR).
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise
            if not replace:
                return None
            trash = artifact_trash_folder(artifacts_dir, uuid.uuid4().hex[:12])
            with contextlib.suppress(FileNotFoundError):
                os.rename(final, trash)
            os.rename(staging, final)
            remove_tree(trash)
        fsync_dir(artifacts_dir)
        return identity
    finally:
        if os.path.isdir(staging):
            remove_tree(staging)
