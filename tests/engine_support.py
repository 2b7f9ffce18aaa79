"""What the tests of transformers' continuous batching through Stitch share."""

from __future__ import annotations

import pytest

# transformers' engine moved between 5.17 (the GPU image's) and 5.23 (its config
# fields, its cache's views); the routing is written against 5.23's.
ENGINE_TRANSFORMERS = (5, 23)


def skip_without_the_engine() -> None:
    """Skip the calling test module where transformers' engine is not 5.23's."""
    transformers = pytest.importorskip("transformers")
    if tuple(int(p) for p in transformers.__version__.split(".")[:2]) < (
        ENGINE_TRANSFORMERS
    ):
        pytest.skip(
            f"transformers {transformers.__version__}: the continuous batching "
            "engine through Stitch needs 5.23 or newer",
            allow_module_level=True,
        )
