"""vLLM's OpenAI server through Stitch, answered through the ``openai`` package.

Started as a server user starts it (``python -m vllm.entrypoints.openai.api_server``,
docs/vllm.md's command) on 127.0.0.1, with its ``$STITCH_VLLM_CONFIG``
(``compile_sizes``), and asked as a client asks it: one request, then eight at
once.  Four servers start one after the other: ``--enforce-eager`` (the
reference tokens), Stitch cold, Stitch warm, and Stitch after the user changed
``$STITCH_VLLM_CONFIG`` (vLLM's saved forward is refused and compiled again).
The Stitch servers' own logs are read too: Stitch's lines come through vLLM's
handlers, once per cause.

Runs only where vllm and openai are importable (their venv: ``.ci/vllm.sh``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if (
    importlib.util.find_spec("vllm") is None
    or importlib.util.find_spec("openai") is None
):
    pytest.skip(
        "vllm and openai are not installed (their venv is built by .ci/vllm.sh)",
        allow_module_level=True,
    )

from vllm_support import vllm_cache_root  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TOKENS = 16
START_TIMEOUT = 600.0
STITCH = '{"mode": 2, "backend": "stitch.runtime.vllm.backend"}'
LOAD_FAILURE = "Compiling model again due to a load failure"
# A log line of vLLM's formatter: "(Worker pid=12) INFO 11-23 15:10:22 [file.py:329] ..."
VLLM_LINE = re.compile(
    r"^\(\w+ pid=\d+\) (INFO|WARNING|ERROR) [\d-]+ [\d:]+ \[\S+:\d+\] "
)


def prompts() -> list[list[int]]:
    """Nine prompts of 3 to 40 token ids, the same in every process."""
    import random

    rng = random.Random(1)
    return [[rng.randrange(1, 32000) for _ in range(3 + 5 * i)] for i in range(9)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(
    model: Path, cache: Path, log: Path, args: list[str], env: dict[str, str]
) -> Iterator[Any]:
    """A vLLM OpenAI server on 127.0.0.1, its client once it answers; stopped after."""
    import openai

    port = free_port()
    environ = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    environ["VLLM_CACHE_ROOT"] = str(vllm_cache_root(cache))
    environ.pop("STITCH_CACHE_DIR", None)
    environ.pop("STITCH_VLLM_CONFIG", None)
    environ.update(env)
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    command += ["--model", str(model), "--skip-tokenizer-init", "--dtype", "float32"]
    command += ["--max-model-len", "512", "--gpu-memory-utilization", "0.2"]
    command += ["--seed", "0", "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, env=environ, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited:\n{log.read_text()[-6000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"server never answered:\n{log.read_text()[-6000:]}"
                )
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                time.sleep(1.0)
        yield client
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def generate(client: Any) -> dict[str, list[list[int]]]:
    """Greedy tokens of the first prompt alone, then of eight prompts sent at once."""
    model = client.models.list().data[0].id

    def one(prompt: list[int]) -> list[int]:
        reply = client.completions.create(
            model=model, prompt=prompt, max_tokens=TOKENS, temperature=0,
            extra_body={"return_token_ids": True, "ignore_eos": True},
        )  # fmt: skip
        return list(reply.choices[0].token_ids)

    first, *rest = prompts()
    alone = [one(first)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, rest))
    return {"1": alone, "8": together}


def stitch_config(**fields: Any) -> dict[str, str]:
    """``$STITCH_VLLM_CONFIG`` with ``fields``, every piece compiled before the
    server answers (``tiered_start`` off): the tests read each server's cold or
    warm start and the entry it leaves."""
    return {"STITCH_VLLM_CONFIG": json.dumps({**fields, "tiered_start": False})}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from stitch.runtime.harness.vllm_engine import save_checkpoint

    root = tmp_path_factory.mktemp("vllm_server")
    model = Path(save_checkpoint(str(root / "model"), "llama", layers=2))
    sizes = stitch_config(compile_sizes=[1, 8])
    variants = [
        ("warm", ["--compilation-config", STITCH], sizes),
        ("changed", ["--compilation-config", STITCH], stitch_config(compile_sizes=[4])),
    ]
    results: dict[str, Any] = {}
    # The eager server beside the cold one (NOTE: [eager references beside
    # the cold starts] in test_vllm.py); later ones use the cold one's cache.
    # (A fleet of two compiling once is test_vllm.py's: a server's engine
    # inherits the store's variables as the engine's workers do.)
    cache = root / "cold"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        eager = pool.submit(serve, model, root / "eager", ["--enforce-eager"], {})
        results["cold"], results["cold_log"] = serve(
            model, cache, ["--compilation-config", STITCH], sizes
        )
        results["eager"], results["eager_log"] = eager.result()
    results["cache"] = cache
    for name, args, env in variants:
        results[name], results[f"{name}_log"] = serve(model, cache, args, env)
        if name == "warm":
            results["inspect"] = inspect(cache / "stitch")
    return results


def serve(
    model: Path, cache: Path, args: list[str], env: dict[str, str]
) -> tuple[dict[str, list[list[int]]], str]:
    """One server's tokens and its log (beside its cache folder)."""
    log = cache.parent / f"{cache.name}.log"
    with server(model, cache, log, args, env) as client:
        tokens = generate(client)
    return tokens, log.read_text()


def inspect(folder: Path) -> tuple[int, str]:
    """``stitch inspect``'s status and report of ``folder``."""
    from stitch.runtime.cli.inspect_job import inspect_cache

    out = io.StringIO()
    return inspect_cache(str(folder), out), out.getvalue()


def stitch_lines(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "stitch" in ln.lower()]


def test_server_through_stitch_answers_eager_tokens(runs: dict[str, Any]) -> None:
    assert runs["cold"] == runs["eager"]
    # The greedy tokens are not one token repeated over and over everywhere.
    assert len({t for row in runs["eager"]["8"] for t in row}) > 8


def test_compile_sizes_from_the_readme_compile_those_sizes(
    runs: dict[str, Any],
) -> None:
    # The one entry of the cold and warm servers: every compiled piece has its
    # general runnable and one for each size.
    status, report = runs["inspect"]
    assert status == 0, report
    rows = [ln for ln in report.splitlines() if ln.startswith("| submod_")]
    assert len(rows) == 3, report
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in rows]
    assert all(c[2:] == ["general, size1, size8", "3"] for c in cells), report


def test_stitch_logs_through_vllms_handlers(runs: dict[str, Any]) -> None:
    cold = [ln for ln in stitch_lines(runs["cold_log"]) if "stitch: graph" in ln]
    assert len(cold) == 1, stitch_lines(runs["cold_log"])
    assert VLLM_LINE.match(cold[0]) and " INFO " in cold[0], cold[0]
    assert "cold start in" in cold[0] and "unique" in cold[0]
    assert str(runs["cache"] / "stitch") in cold[0]
    warm = [ln for ln in stitch_lines(runs["warm_log"]) if "stitch: graph" in ln]
    assert len(warm) == 1 and VLLM_LINE.match(warm[0]), stitch_lines(runs["warm_log"])
    assert "warm start from the saved forward" in warm[0]
    # Nothing of Stitch's reaches the output bare (Python's last-resort handler).
    for name in ("cold_log", "warm_log", "changed_log"):
        bare = [ln for ln in runs[name].splitlines() if ln.startswith("stitch")]
        assert bare == [], bare


def test_second_server_starts_warm(runs: dict[str, Any]) -> None:
    assert runs["warm"] == runs["eager"]
    assert LOAD_FAILURE not in runs["warm_log"]
    assert "cold start" not in runs["warm_log"]


def test_changed_stitch_config_compiles_again_with_one_warning(
    runs: dict[str, Any],
) -> None:
    # vLLM's key for its saved forward does not cover $STITCH_VLLM_CONFIG:
    # the saved forward names an entry of the old config, which is refused.
    log = runs["changed_log"]
    failures = [ln for ln in log.splitlines() if LOAD_FAILURE in ln]
    assert len(failures) == 1, log[-4000:]
    assert "compiled under another Stitch config" in failures[0]
    assert "cold start in" in log
    assert runs["changed"] == runs["eager"]
