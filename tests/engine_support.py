"""What the tests of transformers' continuous batching through Stitch share."""

from __future__ import annotations

import pytest

# transformers' engine moved between 5.17 (the GPU image's), 5.23 (its config
# fields, its cache's layout, the attention name it calls) and 5.24 (who writes
# the paged cache): Stitch reads all three (NOTE: [transformers' engine across
# versions] in runtime/hf/engine_compat.py).  Its server launcher is written
# against 5.23's ``transformers serve`` (5.24's is the same where it reads it).
ENGINE_TRANSFORMERS = (5, 17)
SERVER_TRANSFORMERS = (5, 23)


def _skip_below(wanted: tuple[int, int], what: str) -> None:
    transformers = pytest.importorskip("transformers")
    if tuple(int(p) for p in transformers.__version__.split(".")[:2]) < wanted:
        pytest.skip(
            f"transformers {transformers.__version__}: {what} needs "
            f"{wanted[0]}.{wanted[1]} or newer",
            allow_module_level=True,
        )


def skip_without_the_engine() -> None:
    """Skip the calling test module where transformers' engine is older than 5.17."""
    _skip_below(ENGINE_TRANSFORMERS, "the continuous batching engine through Stitch")


def skip_without_the_server() -> None:
    """Skip the calling test module where ``transformers serve`` is older than 5.23."""
    _skip_below(SERVER_TRANSFORMERS, "transformers serve through Stitch")
