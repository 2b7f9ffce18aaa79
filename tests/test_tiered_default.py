"""Where a tiered start is the default, and where it is not (NOTE: [where a
tiered start is the default], runtime/pipeline/tiered/deferred.py).

The suite runs the default too (NOTE: [the suite runs the defaults],
tests/conftest.py); these tests run fresh processes with no ``STITCH_*``
variable, each with caches of its own, so that they see what a user's
process sees.  transformers' server has its own test
(tests/test_hf_serve.py); vLLM's backend is checked in its venv
(tests/test_vllm.py, whose tiered engine runs on the default).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from stitch.runtime.cli.main import build_parser
from stitch.runtime.pipeline.tiered.controls import TIERED_DEFAULT_ENV
from stitch.runtime.store.cache import CompileCache
from stitch.runtime.store.location import CACHE_ENV
from stitch.runtime.workers import serving_first

RESULT = "TIERED_DEFAULT "

# Each entry point in one process: the example llama, 1 layer, 8 tokens.
ENTRY_POINTS = textwrap.dedent("""
    import json, logging, sys, torch
    from stitch.runtime import CompilationConfig, StitchBackend, aot_compile
    from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs

    root = sys.argv[1]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    cfg = LlamaConfig(num_layers=1)
    model = build_llama(cfg)
    args = llama_inputs(cfg, 8)
    dims = {0: [0], 1: [0]}

    def run(fn):
        model.reset_kv_caches()
        return fn(*args)

    def tier(backend):
        return backend.compiled[-1].tier if backend.compiled else None

    out = {}
    with torch.no_grad():
        want = run(model)
        # aot_compile: off, so the saved forward is written before it returns.
        saved = aot_compile(
            model, args, CompilationConfig(cache_dir=root + "/aot"), dynamic_dims=dims
        )
        out["aot_tier"] = tier(saved.backend) is not None
        out["aot_saved"] = saved.path is not None
        # aot_compile with the caller's backend (transformers' engine's route):
        # the backend's default, on.
        engine = StitchBackend(CompilationConfig(cache_dir=root + "/engine"))
        aot_compile(model, args, backend=engine, dynamic_dims=dims)
        out["engine_tier"] = tier(engine) is not None
        # torch.compile(backend="stitch"): the default config and cache folder.
        fn = torch.compile(model, backend="stitch", dynamic=True)
        out["stitch_equal"] = torch.equal(run(fn), want)
        # StitchBackend(): served at once, every piece swapped in after.
        backend = StitchBackend(CompilationConfig(cache_dir=root + "/backend"))
        fn = torch.compile(model, backend=backend, dynamic=True)
        first = run(fn)
        out["backend_tier"] = tier(backend) is not None
        out["backend_landed"] = backend.wait_compiled(600)
        later = run(fn)  # each landed piece is checked and swapped in here
        out["backend_equal"] = torch.equal(first, want) and bool(
            torch.allclose(later, want, rtol=1e-4, atol=1e-4)
        )
        out["backend_uncompiled"] = tier(backend).timeline()["uncompiled"]
    print("TIERED_DEFAULT " + json.dumps(out), flush=True)
    """)


def _without_the_suites_switch(root: Path) -> dict[str, str]:
    # The default cache folder under root through $XDG_CACHE_HOME, not
    # $STITCH_CACHE_DIR: that one wins over a config's cache_dir where a saved
    # forward finds its entry (saved_function.py), which aot_compile's save here
    # would then miss.
    # A caller's switch for serving first goes too (NOTE: [the suite runs the
    # defaults] in conftest.py sets none): these are the defaults.
    gone = (TIERED_DEFAULT_ENV, CACHE_ENV, serving_first.ENV)
    env = {k: v for k, v in os.environ.items() if k not in gone}
    return dict(
        env,
        XDG_CACHE_HOME=str(root / "xdg"),
        TORCHINDUCTOR_CACHE_DIR=str(root / "inductor"),
    )


def _result(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT)]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(lines[-1][len(RESULT) :])


@pytest.mark.slow
def test_a_backend_call_starts_tiered_by_default_and_aot_compile_does_not(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", ENTRY_POINTS, str(tmp_path)],
        capture_output=True,
        text=True,
        env=_without_the_suites_switch(tmp_path),
        timeout=900,
    )
    out = _result(done)
    # backend="stitch" (a StitchBackend() per graph): its pieces went to a
    # worker, and the first output, uncompiled, is eager's.
    assert re.search(r"pieces compile in \d+ forked worker", done.stderr), done.stderr[
        -4000:
    ]
    assert out["stitch_equal"], out
    assert out["backend_tier"] and out["backend_landed"], out
    assert out["backend_equal"] and not out["backend_uncompiled"], out
    assert not out["aot_tier"] and out["aot_saved"], out
    assert out["engine_tier"], out
    # backend="stitch"'s workers were still compiling when the script ended:
    # its exit waited for them (NOTE: [a process that exits normally waits for
    # its workers]), so the default cache holds every piece for the next run.
    (folder,) = {p.parent for p in (tmp_path / "xdg").rglob("index.py")}
    index = CompileCache.existing(str(folder.parent.parent), str(folder)).index
    assert len(index.pieces) == 2, sorted(index.pieces)  # 1 layer: 2 compiled


@pytest.mark.slow
def test_the_off_switch_and_the_suites_switch_leave_it_off(tmp_path: Path) -> None:
    # Both switches in one process, one after the other (a fresh backend and
    # cache folder each, Dynamo reset between): the field, then
    # $STITCH_TIERED_START=0, set before the second backend call reads it.
    code = textwrap.dedent("""
        import os, sys, torch
        from stitch.runtime import CompilationConfig, StitchBackend
        from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs

        model = build_llama(LlamaConfig(num_layers=1))
        args = llama_inputs(LlamaConfig(num_layers=1), 8)
        for how in ("field", "env"):
            if how == "env":
                os.environ[sys.argv[2]] = "0"
            fields = {"tiered_start": False} if how == "field" else {}
            cache = os.path.join(sys.argv[1], how)
            backend = StitchBackend(CompilationConfig(cache_dir=cache, **fields))
            torch._dynamo.reset()
            with torch.no_grad():
                torch.compile(model, backend=backend, dynamic=True)(*args)
            print("TIERED_DEFAULT", how, backend.compiled[-1].tier is None, flush=True)
        """)
    env = _without_the_suites_switch(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), TIERED_DEFAULT_ENV],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    for how in ("field", "env"):
        assert f"{RESULT}{how} True" in done.stdout, done.stdout + done.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.extended
def test_transformers_engine_starts_tiered_by_default(tmp_path: Path) -> None:
    # An extended test (NOTE: [CI's extended tests] in conftest.py): about a
    # minute.
    pytest.importorskip("transformers")
    code = textwrap.dedent("""
        import json, sys, torch
        from transformers import ContinuousBatchingConfig
        from stitch.runtime import CompilationConfig, StitchBackend
        from stitch.runtime.cli.engine_job import (
            Workload, build_model, engine_fields, finished, greedy, prompts,
        )
        from stitch.runtime.hf import continuous_batching_config
        from stitch.runtime.hf.engine_compat import config_fields

        work = Workload(prompts=2, shortest=3, longest=9, new_tokens=4)
        model = build_model(work)
        batch, fields = prompts(work), engine_fields(work)

        def generate(config):
            with torch.no_grad():
                got = model.generate_batch(
                    batch, greedy(work.new_tokens), continuous_batching_config=config
                )
            results = finished(got, "tiered", len(batch))
            return [o.generated_tokens for o in sorted(results, key=lambda o: o.prompt_ids)]

        eager = ContinuousBatchingConfig(**config_fields(dict(
            fields, default_compile_level=0, max_blocks_per_request=0,
            auto_switch_to_flash=False,
        )))
        want = generate(eager)
        backend = StitchBackend(CompilationConfig(cache_dir=sys.argv[1]))
        got = generate(continuous_batching_config(model, backend, **fields))
        assert model.forward.steps  # waits for the trace, which serving did not
        tiers = [c.tier for c in backend.compiled if c.tier is not None]
        print("TIERED_DEFAULT " + json.dumps({"tiers": len(tiers), "equal": got == want}))
        """)
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        env=_without_the_suites_switch(tmp_path),
        timeout=900,
    )
    out = _result(done)
    assert out["tiers"] >= 1 and out["equal"], out


def test_stitch_run_leaves_it_off_unless_asked() -> None:
    # stitch run times compiled forwards: --tiered asks, nothing else does.
    parser = build_parser()
    assert parser.parse_args(["run", "--example", "llama"]).tiered is False
    assert parser.parse_args(["run", "--example", "llama", "--tiered"]).tiered
