"""Compiled artifacts on disk: one sealed folder per compile key, carrying its identity.

Layout: ``artifacts/<compile key>/artifact.bin`` (what the compiler saved) next to
``artifacts/<compile key>/identity.py``, a literal saying what the artifact is
for (format, compiler, config hash, the piece's structural hash, target, compile
key, size argument, output unwrapping) with the sha256 of ``artifact.bin`` and a
checksum of the record itself.  The folder is filled under a temporary name and
renamed into place: readers see a whole artifact or none, and the first of
several processes to publish a key wins (renaming onto a non-empty folder fails).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import torch.fx as fx

from stitch.codegen.fingerprint import (
    describe_example,
    example_value,
    string_constants,
    structural_hash,
)

from .files import PRIVATE_FILE, fsync_dir, fsync_file, remove_tree, sha256_file
from .index import (
    Invalid,
    field,
    is_bool,
    is_int_or_none,
    is_key,
    is_sha256,
    is_str,
    is_target,
    parse_literal,
    render_literal,
    short,
)

ARTIFACTS_DIR = "artifacts"
ARTIFACT_FILE = "artifact.bin"
IDENTITY_FILE = "identity.py"
# Beside the artifacts: what the pipeline prebuilt from them (wrapper records
# and built kernels), so a load needs no kernel build (pipeline/prebuilt.py).
PREBUILT_DIR = "prebuilt"
# 2: the runtime-size argument is "size_index" (was "sym_index").
ARTIFACT_FORMAT = 2


@dataclasses.dataclass(frozen=True)
class PieceIdentity:
    """What a piece is, from its graph alone (no fake propagation needed).

    ``piece_hash`` is its structural hash with string constants abstracted (so
    twins that differ only in layer names agree), including the example
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
        digest = hashlib.sha256(text.encode()).hexdigest()
        return cls(digest, tuple(string_constants(graph)))


@dataclasses.dataclass(frozen=True)
class ArtifactIdentity:
    """What one artifact was compiled for, and the hash of its bytes."""

    backend: str
    config_hash: str
    piece_hash: str
    # The string constants the compiled code depends on; None when it depends on none.
    strings: tuple[str, ...] | None
    target: str
    key: str
    size_index: int | None
    unwrap: bool
    sha256: str

    def _fields(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["strings"] = None if self.strings is None else list(self.strings)
        return {"format": ARTIFACT_FORMAT, **data}

    def render(self) -> str:
        data = self._fields()
        data["check"] = _checksum(data)
        return render_literal("Stitch artifact identity: a Python literal.", data)

    @classmethod
    def parse(cls, text: str) -> ArtifactIdentity:
        data = parse_literal(text)
        if not isinstance(data, dict):
            raise Invalid("<file>", f"holds {type(data).__name__}, expected a dict")
        field(
            data,
            "format",
            "",
            lambda v: v == ARTIFACT_FORMAT,
            f"format {ARTIFACT_FORMAT}",
        )
        strings = field(
            data,
            "strings",
            "",
            lambda v: v is None
            or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
            "a list of str or None",
        )
        identity = cls(
            backend=field(data, "backend", "", is_str, "a str"),
            config_hash=field(data, "config_hash", "", is_str, "a str"),
            piece_hash=field(data, "piece_hash", "", is_sha256, "a sha256 hex digest"),
            strings=None if strings is None else tuple(strings),
            target=field(data, "target", "", is_target, "a target"),
            key=field(data, "key", "", is_key, "a hex compile key"),
            size_index=field(
                data, "size_index", "", is_int_or_none, "an int >= 0 or None"
            ),
            unwrap=field(data, "unwrap", "", is_bool, "a bool"),
            sha256=field(data, "sha256", "", is_sha256, "a sha256 hex digest"),
        )
        check = field(data, "check", "", is_str, "a str")
        if check != _checksum(identity._fields()):
            raise Invalid(
                "check", "does not match the record (it was edited or is corrupted)"
            )
        return identity

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
        # See NOTE: [ranges share the general artifact] (pipeline/plan.py): a
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


def _checksum(data: dict[str, Any]) -> str:
    return hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()


def read_identity(folder: str) -> ArtifactIdentity:
    """The identity of the artifact in ``folder``, its bytes checked against it.

    Raises :class:`Invalid` (naming the field) or ``OSError``.
    """
    with open(os.path.join(folder, IDENTITY_FILE), encoding="utf-8") as f:
        identity = ArtifactIdentity.parse(f.read())
    actual = sha256_file(os.path.join(folder, ARTIFACT_FILE))
    if actual != identity.sha256:
        raise Invalid(
            "sha256",
            f"is {identity.sha256[:12]}..., but {ARTIFACT_FILE} hashes to {actual[:12]}...",
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
        payload = os.path.join(staging, ARTIFACT_FILE)
        save(payload)
        os.chmod(payload, PRIVATE_FILE)
        fsync_file(payload)
        identity = identity_for(sha256_file(payload))
        fd = os.open(
            os.path.join(staging, IDENTITY_FILE),
            os.O_WRONLY | os.O_CREAT | os.O_EXCL,
            PRIVATE_FILE,
        )
        with os.fdopen(fd, "wb") as f:
            f.write(identity.render().encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(staging)
        final = os.path.join(artifacts_dir, key)
        try:
            os.rename(staging, final)
        except OSError as exc:
            # Something is in the way: a folder (EEXIST, ENOTEMPTY) or a file (ENOTDIR).
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise
            if not replace:
                return None
            trash = os.path.join(artifacts_dir, f".trash-{uuid.uuid4().hex[:12]}")
            with contextlib.suppress(FileNotFoundError):
                os.rename(final, trash)
            os.rename(staging, final)
            remove_tree(trash)
        fsync_dir(artifacts_dir)
        return identity
    finally:
        if os.path.isdir(staging):
            remove_tree(staging)
