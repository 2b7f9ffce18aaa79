"""Stitch in torch's own tools: a compile under ``TORCH_TRACE`` leaves its split
(an artifact) and its phases (``dynamo_timed`` chromium events) in the trace
that tlparse reads (runtime/compat/trace.py, runtime/pipeline/tracing.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stitch.runtime.pipeline.tracing import SPLIT_ARTIFACT

PHASES = ("stitch_split", "stitch_compile", "stitch_emit", "stitch_load")
CAPTURE = "stitch_capture"

# One small compile (the two-layer example: five pieces, two of them splitting
# ops), then a start-up capture under emulated CUDA graphs (no GPU needed).
SCRIPT = """
import json, sys
import torch
from stitch.runtime import CompilationConfig, StitchBackend
from stitch.runtime.cudagraph import CUDAGraphManager, EmulatedGraphOps
from stitch.runtime.examples.models import EXAMPLES

model, inputs = EXAMPLES["two_layer"].build()
backend = StitchBackend(CompilationConfig(backend="eager", cache_dir=sys.argv[1]))
torch.compile(model, backend=backend, dynamic=False)(*inputs)
config = CompilationConfig(cudagraph_capture_sizes=[1, 2])
CUDAGraphManager(config.cudagraphs, ops=EmulatedGraphOps()).capture_sizes(lambda size: None)
reports = [r for c in backend.compiled for r in c.reports]
print(json.dumps([[r.name, r.splitting, r.module_path] for r in reports]))
"""


def read_trace(directory: Path) -> list[tuple[dict[str, Any], str]]:
    """Each entry of the trace logs: its JSON head and its payload.

    torch/_logging/_internal.py writes one line per entry, a glog prefix then
    the JSON after ``"] "``, followed by its payload's lines, each indented by
    a tab."""
    entries: list[tuple[dict[str, Any], str]] = []
    for log in sorted(directory.glob("*.log")):
        for line in log.read_text().splitlines():
            if line.startswith("\t"):
                head, payload = entries[-1]
                entries[-1] = (head, payload + line[1:] + "\n")
            elif "] " in line:
                entries.append((json.loads(line.split("] ", 1)[1]), ""))
    return entries


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One traced compile for the module's tests: the folder holding its
    ``trace`` (read by both tests) and the backend's reports (``reports.json``)."""
    tmp_path = tmp_path_factory.mktemp("traced")
    env = dict(os.environ, TORCH_TRACE=str(tmp_path / "trace"))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "cache")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (tmp_path / "reports.json").write_text(proc.stdout.strip().splitlines()[-1])
    return tmp_path


def test_trace_shows_the_split_and_the_phases(traced: Path) -> None:
    reports = json.loads((traced / "reports.json").read_text())
    entries = read_trace(traced / "trace")
    assert entries, f"no trace entries under {traced / 'trace'}"

    splits = [
        json.loads(payload)
        for head, payload in entries
        if head.get("artifact", {}).get("name") == SPLIT_ARTIFACT
    ]
    assert len(splits) == 1, f"{len(splits)} {SPLIT_ARTIFACT} artifacts in the trace"
    pieces = splits[0]["pieces"]
    # The artifact's pieces are the backend call's, in graph order.
    assert [[p["name"], p["splitting"], p["module_range"]] for p in pieces] == reports
    assert [p["splitting"] for p in pieces] == [False, True, False, True, False]
    assert all(p["module_range"] for p in pieces), pieces
    made = {p["name"]: p["made"] for p in pieces}
    assert made["submod_1"] == made["submod_3"] == "eager (splitting op)"
    assert {made[n] for n in ("submod_0", "submod_2", "submod_4")} <= {
        "compiled",
        "reused",
    }, made

    # Each phase is a begin/end pair of chromium events (tlparse's timeline).
    events: dict[str, list[str]] = {}
    for head, payload in entries:
        if "chromium_event" in head:
            event = json.loads(payload)
            events.setdefault(event["name"], []).append(event["ph"])
    for name in (*PHASES, CAPTURE):
        assert events.get(name) == ["B", "E"], (name, sorted(events))
    # The emitted source is still there, beside them.
    assert any(
        head.get("artifact", {}).get("name") == "stitch_execution_fn"
        for head, _ in entries
    )


def test_tlparse_draws_the_split_and_the_phases(traced: Path, tmp_path: Path) -> None:
    # tlparse (the test extra's pin) reads the same trace: its index links the
    # split and the emitted source, its timeline holds every phase.
    tlparse = shutil.which("tlparse", path=os.path.dirname(sys.executable))
    tlparse = tlparse or shutil.which("tlparse")
    if tlparse is None:
        pytest.skip("tlparse is not installed (pip install -e '.[test]' has it)")
    out = tmp_path / "tlparse"
    logs = sorted(str(p) for p in (traced / "trace").glob("*.log"))
    done = subprocess.run(
        [tlparse, *logs, "-o", str(out), "--overwrite", "--no-browser"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    index = (out / "index.html").read_text()
    for artifact in (SPLIT_ARTIFACT, "stitch_execution_fn"):
        assert artifact in index, f"tlparse's index does not link {artifact}"
    events = json.loads((out / "chromium_events.json").read_text())
    drawn = {e["name"] for e in events}
    assert set(PHASES) | {CAPTURE} <= drawn, sorted(drawn)


PHASE_WITHOUT_TRACE = """
import sys
import torch
from stitch.runtime.compat.trace import phase, tracing
with phase("stitch_capture", sizes=[1]):
    pass
print(tracing(), "torch._dynamo" in sys.modules)
"""


@pytest.mark.parametrize("trace", [False, True], ids=["no_trace", "TORCH_TRACE"])
def test_a_phase_imports_dynamo_only_under_a_trace(tmp_path: Path, trace: bool) -> None:
    """NOTE: [the trace handler torch adds without TORCH_TRACE]: a warm start's
    capture phase must not import Dynamo when no trace is asked for, although
    ``import torch`` left a (dormant) trace handler and nothing has written a
    trace record yet."""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_TRACE"}
    if trace:
        env["TORCH_TRACE"] = str(tmp_path / "trace")
    proc = subprocess.run(
        [sys.executable, "-c", PHASE_WITHOUT_TRACE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(trace), str(trace)]
