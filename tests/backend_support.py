"""Helpers shared by the backend tests: tiny models, compiling, comparing, workers.

The models are the built-in llama-like decoder at its smallest useful size
(hidden 64, 2 layers), so a cold compile takes seconds and a warm one less.
Workers (``backend_worker.py``) run the same compile in a fresh process, which is
what warm start and concurrency are about.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from stitch.runtime import CompilationConfig, StitchBackend, compilation_counter
from stitch.runtime.examples import LlamaConfig, LlamaModel, build_llama, llama_inputs
from stitch.runtime.passes import InductorPass

TINY = LlamaConfig(num_layers=2)
WORKER = Path(__file__).with_name("backend_worker.py")

# Inductor reorders float32 reductions; a wrong weight or a wrong runnable is off
# by O(1), so these bounds separate "same maths" from "different maths" widely.
INDUCTOR_TOL = {"rtol": 1e-4, "atol": 1e-4}


class SpecializeOnLength(InductorPass):
    """A pass that asks whether the token count is 7, as a pass choosing a
    rewrite by size might: the question adds ``Eq(s, 7)`` (or ``Ne``) to
    Dynamo's ShapeEnv during the backend call, and with ``Eq`` Inductor
    compiles the piece for 7 tokens only."""

    LENGTH = 7

    def __call__(self, graph: Any) -> None:
        for node in graph.find_nodes(op="placeholder"):
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim():
                if isinstance(val.shape[0], torch.SymInt):
                    # bool() of a symbolic comparison is what adds the guard.
                    self.seen = bool(val.shape[0] == self.LENGTH)
                    return


def model_for(cfg: LlamaConfig = TINY) -> LlamaModel:
    return build_llama(cfg)


def inputs(cfg: LlamaConfig, n: int, mark: str = "dynamic") -> tuple[torch.Tensor, ...]:
    """Decode inputs for ``n`` tokens, their token dimension marked for Dynamo.

    ``mark``: ``"dynamic"`` (``mark_dynamic``, as serving stacks do), ``"maybe"``
    (``maybe_mark_dynamic``: may be specialized), ``"unbacked"`` (``mark_unbacked``)
    or ``"none"``.
    """
    ids, pos = llama_inputs(cfg, n)
    for t in (ids, pos):
        if mark == "dynamic":
            torch._dynamo.mark_dynamic(t, 0)
        elif mark == "maybe":
            torch._dynamo.maybe_mark_dynamic(t, 0)
        elif mark == "unbacked":
            torch._dynamo.decorators.mark_unbacked(t, 0)
        elif mark != "none":
            raise ValueError(f"mark={mark!r}")
    return ids, pos


def run_fresh(model: LlamaModel, fn: Any, args: Sequence[torch.Tensor]) -> torch.Tensor:
    """``fn(*args)`` from zeroed KV caches (the attention op writes them)."""
    model.reset_kv_caches()
    with torch.no_grad():
        return fn(*args)


def eager_and_compiled(
    model: LlamaModel, compiled: Any, cfg: LlamaConfig, n: int, mark: str = "dynamic"
) -> tuple[torch.Tensor, torch.Tensor]:
    args = inputs(cfg, n, mark)
    out = run_fresh(model, compiled, args)
    ref = run_fresh(model, model, args)
    return ref, out


class CapturingBackend(StitchBackend):
    """A :class:`StitchBackend` that also keeps the callables it returned."""

    def __init__(self, config: CompilationConfig, **collaborators: Any) -> None:
        super().__init__(config, **collaborators)
        self.fns: list[Any] = []

    def __call__(self, gm: Any, example_inputs: Any) -> Any:
        fn = super().__call__(gm, example_inputs)
        self.fns.append(fn)
        return fn


def compile_model(
    model: LlamaModel, config: CompilationConfig
) -> tuple[CapturingBackend, Any]:
    backend = CapturingBackend(config)
    return backend, torch.compile(model, backend=backend, fullgraph=True)


@contextmanager
def counting() -> Iterator[dict[str, int]]:
    """Yields a dict that holds the counter deltas of the block once it ends."""
    deltas: dict[str, int] = {}
    before = compilation_counter.snapshot()
    yield deltas
    after = compilation_counter.snapshot()
    deltas.update({k: after[k] - before[k] for k in after if after[k] != before[k]})


class WarningMessages(logging.Handler):
    """The messages of the warnings a logger it is added to gives.  Added to
    the ``stitch`` logger itself, it sees them where caplog cannot: vLLM's
    handlers, once joined, stop that logger propagating (runtime/vllm/logs.py)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# The notice a process gives once, at its first tier's workers (NOTE: [say
# what is still compiling]): whether a test's process gives it depends on the
# tests before it, so the warnings a test counts leave it out.
STILL_COMPILING = "compile in compile workers: until each lands"


def stitch_warnings(caplog: Any) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "stitch"
        and r.levelname == "WARNING"
        and STILL_COMPILING not in r.getMessage()
    ]


# -- subprocess workers --------------------------------------------------------------


def worker_command(spec: dict[str, Any], worker: Path = WORKER) -> list[str]:
    return [sys.executable, str(worker), json.dumps(spec)]


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # The worker imports the tests' helpers by path, like pytest does.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(WORKER.parent), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


def run_worker(
    spec: dict[str, Any],
    timeout: float = 300,
    env: dict[str, str] | None = None,
    *,
    worker: Path = WORKER,
) -> dict[str, Any]:
    """Run ``worker`` (``backend_worker.py`` unless told) with ``spec`` and extra
    ``env``; its JSON report."""
    proc = subprocess.run(
        worker_command(spec, worker),
        env={**worker_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return parse_worker(proc.returncode, proc.stdout, proc.stderr)


def parse_worker(returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    if returncode != 0:
        raise AssertionError(
            f"worker exited with {returncode}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        )
    lines = [line for line in stdout.splitlines() if line.startswith("WORKER ")]
    if len(lines) != 1:
        raise AssertionError(f"worker printed no report\n{stdout}\n{stderr}")
    report = json.loads(lines[0][len("WORKER ") :])
    report["stderr"] = stderr
    return report


def markdown_rows(text: str) -> list[list[str]]:
    """The stripped cells of every Markdown table row in ``text``: header rows
    included, the rules under them left out.  Checks read cells, not padding."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if all(c and set(c) <= set(":-") for c in cells):
            continue
        rows.append(cells)
    return rows
