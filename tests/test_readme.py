"""Every Python block of README.md runs as written, each in a fresh interpreter."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from vllm_support import vllm_cache_root

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[tuple[str, str]]:
    """``(id, source)`` of each fenced ``python`` block, named after its section."""
    blocks = []
    heading = "top"
    for match in re.finditer(
        r"^(#+ [^\n]*)$|^```python\n(.*?)^```$", README.read_text(), re.M | re.S
    ):
        if match.group(1):
            heading = re.sub(
                r"[^a-z0-9]+", "-", match.group(1).lstrip("# ").lower()
            ).strip("-")
        else:
            blocks.append((f"{heading}-{len(blocks)}", match.group(2)))
    return blocks


BLOCKS = python_blocks()


def test_the_readme_has_python_blocks() -> None:
    # Compiling a model, and Hugging Face models.
    assert len(BLOCKS) >= 2


def _param(source: str, block_id: str) -> object:
    # vLLM's blocks run where vLLM is installed (.ci/vllm.sh selects -m vllm).
    marks = [pytest.mark.vllm] if "from vllm" in source else []
    return pytest.param(source, id=block_id, marks=marks)


@pytest.mark.slow
@pytest.mark.parametrize("source", [_param(s, i) for i, s in BLOCKS])
def test_readme_block_runs_as_written(source: str, tmp_path: Path) -> None:
    if (
        "stitch.runtime.hf" in source
        and importlib.util.find_spec("transformers") is None
    ):
        pytest.skip("needs transformers (pip install -e '.[hf]')")
    if "from vllm" in source and importlib.util.find_spec("vllm") is None:
        pytest.skip("needs vLLM in its own venv (README.md, .ci/vllm.sh)")
    # Caches go to a scratch folder, not the user's ~/.cache (vLLM's model
    # information aside: NOTE: [vLLM's model information, inspected once a
    # session] in vllm_support.py).
    env = {
        **os.environ,
        "STITCH_CACHE_DIR": str(tmp_path / "cache"),
        "VLLM_CACHE_ROOT": str(vllm_cache_root(tmp_path / "vllm-cache")),
    }
    proc = subprocess.run(
        [sys.executable, "-c", source],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert (
        proc.returncode == 0
    ), f"--- block\n{source}\n--- stderr\n{proc.stderr[-4000:]}"
