"""Every Python block of README.md and docs/ runs as written, each in a fresh interpreter.

A block that is not a whole program (an excerpt of emitted source, a fragment
of a longer example) says so on the line before it, with the reason:
``<!-- not run: REASON -->`` (docs/development.md, "Python blocks of the pages").
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from vllm_support import vllm_cache_root

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# A heading, a "not run" comment, or a fenced python block.
_PARTS = re.compile(
    r"^(?P<heading>#+ [^\n]*)$"
    r"|^<!-- not run:(?P<reason>[^\n]*?)-->\n(?=```python\n)"
    r"|^```python\n(?P<source>.*?)^```$",
    re.M | re.S,
)


def python_blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """``(id, source, reason not run)`` of each fenced ``python`` block of ``page``.

    The id names the page and the section the block is in.
    """
    blocks = []
    heading = "top"
    reason = None
    name = page.relative_to(ROOT).as_posix()
    for match in _PARTS.finditer(page.read_text()):
        if match.group("heading"):
            heading = re.sub(
                r"[^a-z0-9]+", "-", match.group("heading").lstrip("# ").lower()
            ).strip("-")
        elif match.group("reason") is not None:
            reason = match.group("reason").strip()
        else:
            block_id = f"{name}:{heading}-{len(blocks)}"
            blocks.append((block_id, match.group("source"), reason))
            reason = None
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in python_blocks(page)]


def _runnable() -> list[tuple[str, str]]:
    # A block shown on two pages (the first compiled model: README.md and
    # docs/compiling.md) runs once, under its first id.
    seen: dict[str, str] = {}
    for block_id, source, reason in ALL_BLOCKS:
        if reason is None:
            seen.setdefault(source, block_id)
    return [(block_id, source) for source, block_id in seen.items()]


BLOCKS = _runnable()
# The README's first compiled model (the block that waits for its compile):
# test_the_first_compiled_model_runs_the_defaults_before_and_after_its_swaps
# runs it as written, with no STITCH_* variable, and asserts more than that it
# runs, so test_readme_block_runs_as_written leaves it to that test.
(FIRST_MODEL,) = [
    s for i, s in BLOCKS if i.startswith("README.md:") and "wait_compiled" in s
]


def test_the_readme_has_python_blocks() -> None:
    # A first compiled model, and at least one block per page that has one.
    readme = [b for b in ALL_BLOCKS if b[0].startswith("README.md:")]
    assert any(reason is None for _, _, reason in readme), readme


def test_every_block_not_run_says_why() -> None:
    # A "not run" comment with no reason hides a block from the tests without
    # saying why.
    unexplained = [block_id for block_id, _, reason in ALL_BLOCKS if reason == ""]
    assert not unexplained, f"<!-- not run: --> without a reason: {unexplained}"


def test_a_not_run_comment_sits_on_a_python_block() -> None:
    # The comment must be the line right before a ```python fence; anywhere
    # else it would silently not apply.
    for page in PAGES:
        for match in re.finditer(r"^<!-- not run:.*$", page.read_text(), re.M):
            after = page.read_text()[match.end() :]
            assert after.startswith(
                "\n```python\n"
            ), f"{page.relative_to(ROOT)}: {match.group(0)!r} is not followed by a ```python block"


def test_every_fence_closes_on_a_line_of_its_own() -> None:
    # A closing fence with text after it ("``` `stitch run ...`") closes
    # nothing: the block ran on into the next one, which neither a reader's
    # renderer nor python_blocks then showed as a block of its own (the next
    # block of docs/cold_start.md went untested that way), and a fence that
    # never closes shows the rest of its page as code (docs/architecture.md's
    # from its second diagram on).
    for page in PAGES:
        opened_at = None
        for number, text in enumerate(page.read_text().split("\n"), 1):
            line = text.lstrip(" ")  # a fence in a list item is indented
            if not line.startswith("```"):
                continue
            where = f"{page.relative_to(ROOT)}:{number}"
            if opened_at is None:
                assert re.fullmatch(r"```[\w+-]*", line), f"{where}: {line!r}"
                opened_at = where
            else:
                assert line == "```", f"{where}: {line!r} does not close {opened_at}"
                opened_at = None
        assert opened_at is None, f"the fence at {opened_at} never closes"


def test_an_excerpt_of_a_golden_is_the_golden() -> None:
    # A block shown as an excerpt of a golden file (its "not run" reason names
    # golden/...py) holds that file's lines in order ("..." marks a cut), so
    # the emitted source the README shows is what Stitch emits today.
    excerpts = [
        (block_id, source, golden)
        for block_id, source, reason in ALL_BLOCKS
        for golden in re.findall(r"golden/\S+\.py", reason or "")
    ]
    assert excerpts, "README.md shows no excerpt of a golden file"
    for block_id, source, golden in excerpts:
        lines = (ROOT / golden).read_text().split("\n")
        at = 0
        for line in source.split("\n"):
            if line.strip() in ("", "..."):
                continue
            try:
                at = lines.index(line, at) + 1
            except ValueError:
                pytest.fail(
                    f"{block_id}: {line!r} is not in {golden} (after line {at})"
                )


def _param(source: str, block_id: str) -> object:
    # vLLM's blocks run where vLLM is installed (.ci/vllm.sh selects -m vllm).
    marks = [pytest.mark.vllm] if "from vllm" in source else []
    return pytest.param(source, id=block_id, marks=marks)


@pytest.mark.slow
@pytest.mark.parametrize(
    "source", [_param(s, i) for i, s in BLOCKS if s is not FIRST_MODEL]
)
def test_readme_block_runs_as_written(source: str, tmp_path: Path) -> None:
    if (
        "stitch.runtime.hf" in source
        and importlib.util.find_spec("transformers") is None
    ):
        pytest.skip("needs transformers (pip install -e '.[hf]')")
    if "from vllm" in source and importlib.util.find_spec("vllm") is None:
        pytest.skip("needs vLLM in its own venv (docs/vllm.md, .ci/vllm.sh)")
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


# What the first compiled model leaves to check once it has run as written.
_AFTER_THE_FIRST_MODEL = """
from stitch.runtime.pipeline.piecewise import PiecewiseBackend
tier = backend.compiled[-1].tier
assert tier is not None, "a cold start on the CPU is a tiered start by default"
line = tier.timeline()
assert tier.settled and not line["uncompiled"], line
assert set(line["swapped_at"]) == set(tier.backends), line
assert all(type(b) is PiecewiseBackend for b in tier.backends.values())
check_against_eager()  # every piece compiled now
print("SWAPPED", len(line["swapped_at"]))
"""


@pytest.mark.slow
def test_the_first_compiled_model_runs_the_defaults_before_and_after_its_swaps(
    tmp_path: Path,
) -> None:
    """NOTE: [say what is still compiling]: the README's first compiled model,
    as written and with no ``STITCH_*`` variable, on empty caches: a tiered
    start (the CPU's default) with unbacked token dimensions.  Its own
    checks compare with eager on uncompiled pieces, then after
    ``wait_compiled()`` while each piece swaps in; here every piece is then
    swapped in and the compiled ones serve a third round, equal to eager."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STITCH_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")  # the default cache, empty
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor")
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_MODEL + _AFTER_THE_FIRST_MODEL],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SWAPPED" in proc.stdout, proc.stdout
    # Said once: the forwards before the wait ran uncompiled pieces.
    assert proc.stderr.count("compile in compile workers") == 1, proc.stderr[-4000:]
    assert list((tmp_path / "xdg" / "stitch").iterdir()), "the default cache is empty"
