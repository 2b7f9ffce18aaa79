"""Stitch inside vLLM's real engine: tokens and log-probabilities equal vLLM eager's,
a second engine process starts warm through vLLM's AOT loader, a broken entry
recompiles with one warning.

Runs only where vllm is importable (its own venv: ``.ci/vllm.sh``); each engine
runs in a fresh process (``python -m stitch.runtime.harness.vllm_engine``).  Engines
start slowly (15-70 s on 2 cores), so the module starts ten: Llama eager, two
cold together, warm, with two broken entries, and a tiered start cold and warm;
Mixtral eager and cold (with a misspelled field and an op the graph lacks).  The
eager references run vLLM's engine core in the engine's process, the others in
a process of its own, as vLLM does by default (NOTE: [vLLM's engine core in
the engine's process]).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from vllm_support import vllm_cache_root

if importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vllm is not installed (its venv is built by .ci/vllm.sh)",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

RESULT = "STITCH_VLLM_RESULT "
LOAD_FAILURE = "Compiling model again due to a load failure"
TOKENS = 24
# The same model in float32 through different kernels: log-probabilities agree
# to float noise (about 1e-5 here), far inside this.
LOGPROB_TOL = 2e-3


def run_engine(
    model: Path,
    variant: str,
    cache: Path,
    env: dict[str, str] | None = None,
    backend: str | None = None,
    *,
    one_process: bool = False,
) -> tuple[dict[str, Any], str]:
    """One engine in a fresh process: its result and its output (logs).

    ``one_process``: vLLM's engine core runs in that process, not in one it
    starts (NOTE: [vLLM's engine core in the engine's process])."""
    environ = dict(os.environ, VLLM_CACHE_ROOT=str(vllm_cache_root(cache)))
    environ.pop("STITCH_CACHE_DIR", None)
    environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if one_process else "1"
    environ.update(env or {})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stitch.runtime.harness.vllm_engine",
            str(model),
            variant,
        ]
        + ["--batches", "1,4", "--max-tokens", str(TOKENS)]
        + (["--backend", backend] if backend else []),
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    assert proc.returncode == 0 and lines, f"{variant} engine failed:\n{output[-6000:]}"
    return json.loads(lines[-1][len(RESULT) :]), output


def assert_same_generation(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["tokens"] == want["tokens"]
    for batch, rows in want["logprobs"].items():
        for row_got, row_want in zip(got["logprobs"][batch], rows, strict=True):
            worst = max(abs(a - b) for a, b in zip(row_got, row_want, strict=True))
            assert worst < LOGPROB_TOL, f"batch {batch}: logprobs differ by {worst}"
    # The greedy tokens are decided, not ties (NOTE: [logits of a trained
    # model's spread] in harness/vllm_engine.py): the sampled token is far
    # above uniform.
    assert max(want["logprobs"]["1"][0]) > math.log(1 / 32000) + 3


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from stitch.runtime.harness.vllm_engine import save_checkpoint

    root = tmp_path_factory.mktemp("vllm_llama")
    model = Path(save_checkpoint(str(root / "model"), "llama", layers=4))
    # The cold start is two engines started together on one shared store:
    # the one that compiled is "cold", the other "peer" (NOTE in fleet_pair);
    # the eager reference runs beside them (NOTE: [eager references beside
    # the cold starts]).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        eager_run = pool.submit(
            run_engine, model, "eager", root / "eager", one_process=True
        )
        pair = fleet_pair(
            root,
            lambda cache, env: run_engine(model, "stitch", cache, env),
            lambda run: run[0]["counters"]["stitch"]["num_inductor_compiles"] > 0,
        )
        eager, _ = eager_run.result()
    (cold, cold_log), cache = pair["cold"]
    warm, warm_log = run_engine(model, "stitch", cache)
    return dict(
        model=model, cache=cache, eager=eager, cold=cold, cold_log=cold_log,
        warm=warm, warm_log=warm_log, peer=pair["peer"][0], both=pair["both"],
    )  # fmt: skip


# NOTE: [vLLM's engine core in the engine's process]
# By default vLLM's LLM starts its engine core in a process of its own, which
# imports vLLM, torch and the model again: on the 2-core CI machine an eager
# Llama engine took 40 s of wall time (42 s of CPU) that way and 15 s (16 s)
# with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, with the same tokens and
# log-probabilities.  The eager references run that way; they are read for
# their tokens and counters only.  Every engine through Stitch keeps vLLM's
# default: a backend named by a string, the config in the environment and the
# tiered start's workers cross into the engine core's process there, and
# vLLM keys its saved forward by that setting too (an engine run the other
# way beside a cache of the default's traced and saved its own, so a warm
# start or a broken entry would not be read).

# NOTE: [eager references beside the cold starts]
# A vLLM engine or server on CPU keeps about one core busy while it starts
# (imports, the worker's spawn, the trace, Inductor's compiles one at a time),
# and the eager reference needs nothing from the Stitch runs.  So it starts
# beside them rather than before: its tokens and counters are its own, and the
# runs compared with it only read its result.  Over the module this takes
# about 3 minutes off the vLLM tests' 17 on the 2-core CI machine.


def fleet_pair(
    root: Path,
    start: Callable[[Path, dict[str, str]], Any],
    compiled: Callable[[Any], bool],
) -> dict[str, Any]:
    """Two engines started at once, caches of their own, one Redis store.

    NOTE: [a fleet of two vLLM engines]
    Both get only ``$STITCH_CACHE_URL`` and ``$STITCH_CACHE_KEY`` (vLLM's
    workers inherit them).  Whichever takes the store's lease first compiles
    ("cold", with its cache folder), the other waits and installs ("peer").
    ``both``: whether each of them compiled.  Dynamo traces in both: vLLM's own
    saved forward lives in each engine's cache.
    """
    from redis_support import RedisServer

    (root / "redis").mkdir(parents=True)
    store = RedisServer(root / "redis")
    store.start()
    env = {"STITCH_CACHE_URL": store.url, "STITCH_CACHE_KEY": "vllm-fleet-test"}
    runs: dict[str, Any] = {}

    def one(name: str) -> None:
        try:
            runs[name] = start(root / name, env)
        except BaseException as exc:  # noqa: BLE001 - raised below
            runs[name] = exc

    try:
        threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        store.stop()
    for run in runs.values():
        if isinstance(run, BaseException):
            raise run
    both = {n: compiled(run) for n, run in runs.items()}
    first = "a" if both["a"] else "b"
    other = "b" if first == "a" else "a"
    return {
        "cold": (runs[first], root / first),
        "peer": (runs[other], root / other),
        "both": both,
    }


def test_two_engines_started_together_compile_once(llama: dict[str, Any]) -> None:
    # NOTE: [a fleet of two vLLM engines]
    assert sorted(llama["both"].values()) == [False, True], llama["both"]
    peer, peer_log = llama["peer"]
    assert_same_generation(peer, llama["eager"])
    assert peer["counters"]["stitch"]["num_inductor_compiles"] == 0
    assert "stitch cache: installed" in peer_log, peer_log[-4000:]
    assert "warm start" in peer_log, peer_log[-4000:]
    assert "published" in llama["cold_log"]


def test_llama_through_stitch_matches_vllm_eager(llama: dict[str, Any]) -> None:
    cold = llama["cold"]
    assert_same_generation(cold, llama["eager"])
    stitch = cold["counters"]["stitch"]
    # One Dynamo graph, split at each layer's attention: 4 attention pieces
    # and 5 compiled pieces, of which 3 are unique (first, middle, last).
    assert stitch["num_backend_compilations"] == 1
    assert stitch["num_piecewise_capturable_graphs_seen"] == 5
    assert stitch["num_piecewise_graphs_seen"] == 9
    assert stitch["num_inductor_compiles"] == 3
    assert cold["counters"]["vllm_aot_compiles"] == 1
    assert LOAD_FAILURE not in llama["cold_log"]
    # vLLM's splitting ops the model lacks (Mamba mixers, MLA, ...) are defaults:
    # they never warn one by one.
    assert "matched no node" not in llama["cold_log"]


def test_second_engine_starts_warm(llama: dict[str, Any]) -> None:
    warm, eager = llama["warm"], llama["eager"]
    assert_same_generation(warm, eager)
    counters = warm["counters"]
    assert LOAD_FAILURE not in llama["warm_log"], llama["warm_log"][-4000:]
    assert counters["vllm_aot_loaded"] == 1
    assert counters["vllm_aot_compiles"] == 0
    # No backend call, no Inductor compile: the pieces load from their
    # prebuilt records.
    stitch = counters["stitch"]
    assert stitch["num_backend_compilations"] == 0
    assert stitch["num_inductor_compiles"] == 0
    assert stitch["num_prebuilt_loads"] == 3
    # Dynamo traces only what vLLM eager traces too (its logprobs helper); the
    # cold process traced one graph more, the model.
    assert counters["dynamo_graphs"] == eager["counters"]["dynamo_graphs"]
    assert llama["cold"]["counters"]["dynamo_graphs"] == counters["dynamo_graphs"] + 1


def test_tiered_engine_serves_then_its_saved_forward_starts_warm(
    llama: dict[str, Any], tmp_path: Path
) -> None:
    # NOTE: [a tiered start]: the engine serves on uncompiled pieces while its
    # compile workers build them; vLLM's AOT save, made at once, names the
    # entry the workers complete, and a second engine loads it warm.
    cache = tmp_path / "tiered"
    cold, cold_log = run_engine(llama["model"], "tiered", cache)
    assert_same_generation(cold, llama["eager"])
    want = llama["eager"]["tokens"]["1"][0]
    assert cold["tokens_meanwhile"] and all(t == want for t in cold["tokens_meanwhile"])
    (tier,) = cold["tiers"]
    assert tier["settled"] and not tier["uncompiled"], tier
    assert len(tier["swapped_at"]) == 5  # the 3 unique pieces and 2 repeats
    assert cold["counters"]["stitch"]["num_inductor_compiles"] == 3
    assert "runs compiled from" in cold_log and LOAD_FAILURE not in cold_log
    warm, warm_log = run_engine(llama["model"], "tiered", cache)
    assert LOAD_FAILURE not in warm_log, warm_log[-4000:]
    assert warm["counters"]["vllm_aot_loaded"] == 1
    assert warm["counters"]["stitch"]["num_inductor_compiles"] == 0
    assert warm["tiers"] == [] and warm["tokens_meanwhile"] == []
    assert_same_generation(warm, llama["eager"])


def test_unloadable_entry_recompiles_with_one_warning(llama: dict[str, Any]) -> None:
    # Rewrite the Stitch entry's index behind the saved forward's back: the
    # saved reference's checksum no longer matches, so loading must refuse it.
    (index,) = (llama["cache"] / "stitch").glob("*/rank_0/index.py")
    index.write_text(index.read_text() + "\n# rewritten\n")
    result, log = run_engine(llama["model"], "stitch", llama["cache"])
    assert log.count(LOAD_FAILURE) == 1, log[-4000:]
    line = next(ln for ln in log.splitlines() if LOAD_FAILURE in ln)
    assert "was rewritten since it was saved" in line
    assert result["counters"]["vllm_aot_compiles"] == 1
    assert_same_generation(result, llama["eager"])


def test_truncated_artifact_is_reported_once(llama: dict[str, Any]) -> None:
    # NOTE: [a broken entry is reported once, by the run that rebuilds it]:
    # vLLM says the saved forward failed to load, naming the file, and the
    # compile that follows rebuilds it with one warning of Stitch's.
    artifact = sorted(
        (llama["cache"] / "stitch").glob("*/rank_0/artifacts/*/artifact.bin")
    )[0]
    with open(artifact, "r+b") as f:
        f.truncate(100)
    result, log = run_engine(llama["model"], "stitch", llama["cache"])
    failures = [ln for ln in log.splitlines() if LOAD_FAILURE in ln]
    assert len(failures) == 1 and str(artifact) in failures[0], log[-4000:]
    named = [ln for ln in log.splitlines() if str(artifact) in ln]
    warnings = [ln for ln in named if "stitch cache:" in ln]
    assert len(warnings) == 1 and "rebuilding" in warnings[0], named
    assert len(named) == 2, named
    assert_same_generation(result, llama["eager"])


def test_mixtral_through_stitch_matches_vllm_eager(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from stitch.runtime.harness.vllm_engine import save_checkpoint
    from stitch.runtime.vllm import vllm_splitting_ops

    root = tmp_path_factory.mktemp("vllm_mixtral")
    model = Path(save_checkpoint(str(root / "model"), "mixtral", layers=2))
    cache = root / "cache"
    fields = {
        "splitting_ops": vllm_splitting_ops() + ["vllm::no_such_attention"],
        "compile_szes": [4],
    }
    # docs/vllm.md's other routes: a backend_with() object of a module the
    # workers import, named by its qualified name, and $STITCH_CACHE_DIR.
    (root / "mixtral_backend.py").write_text(
        "from stitch.runtime.vllm import backend_with\n\n"
        "sized = backend_with(compile_sizes=[4])\n"
    )
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    mine = root / "mine"
    env = {
        "STITCH_VLLM_CONFIG": json.dumps(fields),
        "PYTHONPATH": path,
        "STITCH_CACHE_DIR": str(mine),
    }
    # NOTE: [eager references beside the cold starts]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        eager_run = pool.submit(
            run_engine, model, "eager", root / "eager", one_process=True
        )
        cold, log = run_engine(model, "stitch", cache, env, "mixtral_backend.sized")
        eager, _ = eager_run.result()
    assert_same_generation(cold, eager)
    assert cold["counters"]["stitch"]["num_piecewise_capturable_graphs_seen"] == 3
    assert not (cache / "stitch").exists()
    (index,) = mine.glob("*/rank_0/index.py")
    assert index.read_text().count("'size4'") == 3  # every compiled piece
    bad_op = [ln for ln in log.splitlines() if "'vllm::no_such_attention'" in ln]
    assert len(bad_op) == 1 and "matched no node" in bad_op[0], log[-4000:]
    assert log.count("matched no node") == 1  # vLLM's own ops stay quiet
    bad_field = [ln for ln in log.splitlines() if "'compile_szes'" in ln]
    assert len(bad_field) == 1, log[-4000:]
    assert "did you mean 'compile_sizes'?" in bad_field[0]


# -- the config a vLLM engine gets (no engine) ---------------------------------------


def test_stitch_logs_through_the_engines_handlers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import logging

    from stitch.runtime.vllm.logs import join_vllm_logging

    stitch, engine = logging.getLogger("stitch"), logging.getLogger("vllm")
    for logger in (stitch, engine):
        monkeypatch.setattr(logger, "handlers", [])
        monkeypatch.setattr(logger, "propagate", logger.propagate)
        monkeypatch.setattr(logger, "level", logger.level)
    # vLLM configured nothing (VLLM_CONFIGURE_LOGGING=0): nothing changes.
    assert join_vllm_logging() is False and stitch.handlers == []
    handler = logging.StreamHandler()
    engine.addHandler(handler)
    engine.setLevel(logging.WARNING)
    assert join_vllm_logging() is True
    assert join_vllm_logging() is True  # once
    assert stitch.handlers == [handler] and not stitch.propagate
    assert stitch.level == logging.WARNING
    # A handler of the user's own on "stitch" is left as it is.
    mine = logging.StreamHandler()
    monkeypatch.setattr(stitch, "handlers", [mine])
    assert join_vllm_logging() is False and stitch.handlers == [mine]


def test_torch_registry_name_is_the_backend() -> None:
    # "backend": "stitch_vllm" reaches vLLM through torch's backend registry.
    import torch._dynamo

    from stitch.runtime.vllm import StitchVllmBackend

    assert isinstance(torch._dynamo.lookup_backend("stitch_vllm"), StitchVllmBackend)


def fake_vllm_config(tokens: int = 4096, splitting_ops: Any = None) -> Any:
    from vllm.config import CompilationConfig as VllmCompilationConfig

    compilation = VllmCompilationConfig()
    compilation.splitting_ops = splitting_ops
    return types.SimpleNamespace(
        compilation_config=compilation,
        scheduler_config=types.SimpleNamespace(max_num_batched_tokens=tokens),
    )


def test_config_takes_vllm_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from vllm.config import CompilationConfig as VllmCompilationConfig

    from stitch.runtime.vllm import stitch_config

    monkeypatch.delenv("STITCH_CACHE_DIR", raising=False)
    monkeypatch.delenv("STITCH_VLLM_CONFIG", raising=False)
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm"))
    # vLLM's mode 2 leaves splitting_ops empty: Stitch splits at vLLM's own list.
    config = stitch_config(fake_vllm_config(splitting_ops=[]))
    assert config.splitting_ops == list(VllmCompilationConfig._attention_ops)
    assert config.max_num_batched_tokens == 4096
    assert config.cache_dir == str(tmp_path / "vllm" / "stitch")
    # On CPU, the Inductor options vLLM's own CPU compile uses; vLLM's own
    # inductor_compile_config comes along.
    assert config.inductor_compile_config["size_asserts"] is False
    assert config.inductor_compile_config["cpp.dynamic_threads"] is True
    assert config.inductor_compile_config["enable_auto_functionalized_v2"] is False
    # A compile of one size (compile_sizes) gets what vLLM's own Inductor adaptor
    # turns on for it, its environment variables included.
    from vllm.compilation.compiler_interface import set_inductor_config
    from vllm.config.utils import Range

    for autotune in ("1", "0"):
        monkeypatch.setenv("VLLM_ENABLE_INDUCTOR_MAX_AUTOTUNE", autotune)
        vllms: dict[str, Any] = {}
        set_inductor_config(vllms, Range(start=8, end=8))
        assert stitch_config(fake_vllm_config()).compile_sizes_inductor_config == vllms
        assert vllms["max_autotune"] is (autotune == "1")
    monkeypatch.setenv("STITCH_CACHE_DIR", str(tmp_path / "mine"))
    mine = stitch_config(fake_vllm_config(256, ["vllm::unified_attention_with_output"]))
    assert mine.cache_dir == str(tmp_path / "mine")
    assert mine.splitting_ops == ["vllm::unified_attention_with_output"]
    assert mine.max_num_batched_tokens == 256


def test_config_fields_from_env_and_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    from stitch.core.errors import StitchConfigError
    from stitch.runtime.vllm import backend_with, stitch_config

    monkeypatch.setenv("STITCH_VLLM_CONFIG", '{"compile_sizes": [1, 8]}')
    assert stitch_config(fake_vllm_config()).compile_sizes == [1, 8]
    factory = backend_with(compile_sizes=[2])
    assert stitch_config(fake_vllm_config(), factory.fields).compile_sizes == [2]
    monkeypatch.setenv("STITCH_VLLM_CONFIG", "compile_sizes=[1]")
    with pytest.raises(StitchConfigError, match="STITCH_VLLM_CONFIG.*not JSON"):
        stitch_config(fake_vllm_config())
    # A known field with a bad value is the core's own error, naming it.
    monkeypatch.setenv("STITCH_VLLM_CONFIG", '{"compile_sizes": [9000]}')
    with pytest.raises(StitchConfigError, match="compile_sizes.*9000"):
        stitch_config(fake_vllm_config())


def test_a_misspelt_field_is_one_warning_however_often_the_config_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The backend builds its config when it is made and again at each call.
    from stitch.runtime.vllm import stitch_config

    from backend_support import WarningMessages

    monkeypatch.setenv("STITCH_VLLM_CONFIG", '{"compile_sizs": [3]}')
    seen = WarningMessages()
    logging.getLogger("stitch").addHandler(seen)
    try:
        for _ in range(3):
            assert stitch_config(fake_vllm_config()).compile_sizes != [3]
    finally:
        logging.getLogger("stitch").removeHandler(seen)
    lines = [line for line in seen.messages if "'compile_sizs'" in line]
    assert len(lines) == 1 and "did you mean 'compile_sizes'?" in lines[0], lines
