"""A tiered start (NOTE: [a tiered start], runtime/pipeline/tiered/tier.py): the
backend returns before Inductor compiles, pieces run uncompiled, compile
workers bring each one back through the cache entry, and faults leave serving
on the uncompiled pieces."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.fx as fx

from stitch.runtime import CompilationConfig
from stitch.runtime.examples import LlamaConfig
from stitch.runtime.passes import InductorPass
from stitch.runtime.pipeline.piecewise import PiecewiseBackend
from stitch.runtime.pipeline.tiered.swap_check import unset_outputs
from stitch.runtime.store.cache import CompileCache
from stitch.runtime.workers import serving_first

from backend_support import (
    INDUCTOR_TOL,
    TINY,
    compile_model,
    counting,
    inputs,
    model_for,
    run_fresh,
    stitch_warnings,
)

pytestmark = pytest.mark.slow

SWAP_WAIT_S = 480.0  # workers give way to the forwards (NOTE: [serving first])


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Any:
    # Each test compiles the example llama anew: a frame Dynamo compiled for
    # another test's sizes would recompile with those dims made dynamic (its
    # automatic dynamic shapes), a graph of another cache key.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiered(cache: Path, **fields: Any) -> CompilationConfig:
    return CompilationConfig(cache_dir=str(cache), tiered_start=True, **fields)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie not yet reaped counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        # Gone before the open, or between the open and the read (ESRCH).
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def serve_until_settled(model: Any, fn: Any, tier: Any, cfg: LlamaConfig = TINY) -> int:
    """Forwards over 2-8 tokens (1 is a graph of its own) until every piece is swapped in or given up,
    each checked against eager; the number of forwards run."""
    deadline = time.monotonic() + SWAP_WAIT_S
    n = 0
    while not tier.settled:
        assert (
            time.monotonic() < deadline
        ), f"no settle in {SWAP_WAIT_S}s: {tier.timeline()}"
        args = inputs(cfg, 2 + n % 7)
        out, ref = run_fresh(model, fn, args), run_fresh(model, model, args)
        torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
        n += 1
        time.sleep(0.02)
    return n


def entry_index(cache: Path) -> Any:
    (folder,) = {p.parent for p in cache.rglob("index.py")}
    return CompileCache.existing(str(cache), str(folder)).index


def _fail_as_the_ast_check_did(ok: bool) -> None:
    raise SystemError("AST constructor recursion depth mismatch (before=99, after=24)")


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_tiered_start_serves_at_once_and_swaps_every_piece(
    tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    # NOTE: [forked or spawned compile workers]: on a GPU they are spawned.
    monkeypatch.setenv("STITCH_COMPILE_START", start)
    # Serving first, the users' default (NOTE: [serving first] in
    # runtime/workers/serving_first.py), end to end with forked workers; spawned
    # workers are watched all the same (below) but run as equals, for the
    # suite's time (this test took 118 s with spawned workers giving way, 52 s
    # with forked ones, beside vLLM's tests on 2 cores).
    monkeypatch.setenv(serving_first.ENV, "1" if start == "fork" else "0")
    watched: set[int] = set()
    watch = serving_first.ServingFirst.watch
    monkeypatch.setattr(
        serving_first.ServingFirst,
        "watch",
        lambda self, pid: (watched.add(pid), watch(self, pid))[1],
    )
    caplog.set_level("INFO", logger="stitch")
    model = model_for()
    with counting() as cold:
        backend, fn = compile_model(model, tiered(tmp_path))
        args = inputs(TINY, 5)
        torch.testing.assert_close(
            run_fresh(model, fn, args), run_fresh(model, model, args), **INDUCTOR_TOL
        )
        compiled = backend.compiled[-1]
        tier = compiled.tier
        assert tier is not None and not compiled.warm
        # Every piece started uncompiled (some may have been swapped by now).
        assert set(tier.backends) == set(compiled.backends)
        # NOTE: [serving first]: its workers give way to this process.
        assert set(tier.pids) <= watched | set(filter(gone, tier.pids))
        # NOTE: [what waits for the last swap never fails a forward]: a
        # callback that fails (as the saved record's check once did) is a
        # warning; the forward that swaps, and the callbacks after, go on.
        completed: list[bool] = []
        tier.when_complete(_fail_as_the_ast_check_did)
        tier.when_complete(completed.append)
        serve_until_settled(model, fn, tier)
    assert not tier.timeline()["uncompiled"], tier.timeline()
    assert completed == [True]
    failed = [m for m in caplog.messages if "waited for the last swap failed" in m]
    assert len(failed) == 1 and "SystemError: AST constructor" in failed[0], failed
    # Registered once settled, they run at once, the same way.
    tier.when_complete(_fail_as_the_ast_check_did)
    tier.when_complete(completed.append)
    assert completed == [True, True]
    failed = [m for m in caplog.messages if "waited for the last swap failed" in m]
    assert len(failed) == 2 and "SystemError: AST constructor" in failed[1], failed
    assert set(tier.timeline()["swapped_at"]) == set(compiled.backends)
    # Swapped pieces are plain backends: nothing of the tier is left per call.
    assert all(type(b) is PiecewiseBackend for b in compiled.backends.values())
    swaps = [m for m in caplog.messages if "runs compiled from" in m]
    assert len(swaps) == len(compiled.backends)
    said = [m for m in caplog.messages if re.search(rf"\d+ {start}ed worker", m)]
    assert said, caplog.messages
    assert cold["num_inductor_compiles"] >= 1  # the workers' counts come back
    # The entry is complete: a second start compiles nothing.
    torch._dynamo.reset()
    with counting() as warm:
        backend2, fn2 = compile_model(model, tiered(tmp_path))
        args = inputs(TINY, 3)
        torch.testing.assert_close(
            run_fresh(model, fn2, args), run_fresh(model, model, args), **INDUCTOR_TOL
        )
    assert backend2.compiled[-1].warm and backend2.compiled[-1].tier is None
    assert warm.get("num_inductor_compiles", 0) == 0


def test_workers_forked_after_an_in_process_compile_still_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NOTE: [Inductor's pools in a forked process]: an earlier compile in this
    # process left Inductor's build thread pool cached; a worker forked after it
    # must not submit its C++ builds there (they never ran: CI's hang).
    from torch._inductor.async_compile import AsyncCompile, get_compile_threads

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    first = model_for(LlamaConfig(num_layers=1, hidden_size=48, num_heads=4))
    # An in-process compile first: the call compiles its pieces itself.
    _, fn = compile_model(
        first, CompilationConfig(cache_dir=str(tmp_path / "a"), tiered_start=False)
    )
    run_fresh(first, fn, inputs(TINY, 3))
    if get_compile_threads() > 1:
        assert AsyncCompile.pool.cache_info().currsize == 1  # the state CI hit
    torch._dynamo.reset()
    cfg = LlamaConfig(num_layers=2, hidden_size=80, num_heads=4)
    model = model_for(cfg)
    backend, fn = compile_model(model, tiered(tmp_path / "b"))
    run_fresh(model, fn, inputs(cfg, 3))
    tier = backend.compiled[-1].tier
    serve_until_settled(model, fn, tier, cfg)
    assert not tier.timeline()["uncompiled"], tier.timeline()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's SCHED_IDLE")
@pytest.mark.parametrize("nice", ["", "idle"])
def test_a_worker_compiles_at_the_priority_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nice: str
) -> None:
    # NOTE: [a compile worker's priority]: an equal by default, or SCHED_IDLE.
    monkeypatch.setenv("STITCH_COMPILE_NICE", nice)
    model = model_for()
    backend, fn = compile_model(model, tiered(tmp_path, compile_workers=1))
    run_fresh(model, fn, inputs(TINY, 4))
    (pid,) = backend.compiled[-1].tier.pids
    want = os.SCHED_IDLE if nice else os.SCHED_OTHER
    # The worker takes it itself, right after the fork.
    deadline, policy = time.monotonic() + 10, None
    while time.monotonic() < deadline:
        policy = os.sched_getscheduler(pid)
        if policy == want:
            break
        time.sleep(0.01)
    assert policy == want, policy
    assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0)
    # At idle priority it might wait long for a core here: ended, not awaited.
    os.kill(pid, signal.SIGKILL)
    assert backend.compiled[-1].tier.wait(SWAP_WAIT_S)


def test_a_killed_worker_leaves_serving_uncompiled_and_no_partial_entry(
    tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NOTE: [a compile worker's priority]: a niceness
    # instead, where $STITCH_COMPILE_NICE names one.
    monkeypatch.setenv("STITCH_COMPILE_NICE", "7")
    model = model_for()
    backend, fn = compile_model(model, tiered(tmp_path, compile_workers=1))
    args = inputs(TINY, 4)
    run_fresh(model, fn, args)
    tier = backend.compiled[-1].tier
    (pid,) = tier.pids
    # The worker takes its priority once forked, which may have been just now
    # (NOTE: [Dynamo's graph serves while the stitching is built]).
    want = 7 + os.getpriority(os.PRIO_PROCESS, 0)
    deadline = time.monotonic() + 30
    while os.getpriority(os.PRIO_PROCESS, pid) != want and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.getpriority(os.PRIO_PROCESS, pid) == want
    os.kill(pid, signal.SIGKILL)
    serve_until_settled(model, fn, tier)
    left = tier.timeline()["uncompiled"]
    assert left and all("killed by SIGKILL" in why for why in left.values())
    warned = [w for w in stitch_warnings(caplog) if "stays uncompiled" in w]
    assert len(warned) == len(left)
    # Only pieces whose artifacts are written are in the index.
    index = entry_index(tmp_path)
    for name, record in index.pieces.items():
        assert all(e.saved for e in record.entries), name
    # The next start compiles what is missing and nothing else.
    torch._dynamo.reset()
    with counting() as deltas:
        # The compile counts below: what is missing compiles in the call.
        _, fn2 = compile_model(
            model, CompilationConfig(cache_dir=str(tmp_path), tiered_start=False)
        )
        run_fresh(model, fn2, args)
    # A piece whose artifact was written before the kill, but not its record,
    # is found by its key too.
    assert deltas.get("num_cache_hits", 0) >= len(index.pieces), str(deltas)
    assert deltas.get("num_cache_hits", 0) + deltas.get(
        "num_inductor_compiles", 0
    ) == len(backend.compiled[-1].backends)


class Broken(InductorPass):
    name = "BrokenPass"

    def __call__(self, graph: fx.Graph) -> None:
        raise ValueError("no rewrite today")


def test_a_compile_error_leaves_the_piece_uncompiled_with_one_warning(
    tmp_path: Path, caplog: Any
) -> None:
    model = model_for()
    backend, fn = compile_model(model, tiered(tmp_path, inductor_passes=[Broken()]))
    args = inputs(TINY, 2)
    run_fresh(model, fn, args)
    tier = backend.compiled[-1].tier
    serve_until_settled(model, fn, tier)
    left = tier.timeline()["uncompiled"]
    assert set(left) == set(backend.compiled[-1].backends)
    assert all(
        "BrokenPass" in why and "no rewrite today" in why for why in left.values()
    )
    warned = [w for w in stitch_warnings(caplog) if "stays uncompiled" in w]
    assert len(warned) == len(left)


class Doubles(InductorPass):
    """Compiles wrong on purpose: every rsqrt's result is doubled."""

    name = "DoublesRsqrt"

    def __call__(self, graph: fx.Graph) -> None:
        for node in list(graph.nodes):
            if node.target is torch.ops.aten.rsqrt.default:
                with graph.inserting_after(node):
                    double = graph.call_function(torch.ops.aten.mul.Tensor, (node, 2.0))
                node.replace_all_uses_with(double)
                double.args = (node, 2.0)


def test_a_piece_that_compiles_wrong_is_refused_and_never_compiled_again(
    tmp_path: Path, caplog: Any
) -> None:
    model = model_for()
    config = tiered(tmp_path, inductor_passes=[Doubles()])
    backend, fn = compile_model(model, config)
    run_fresh(model, fn, inputs(TINY, 3))
    tier = backend.compiled[-1].tier
    serve_until_settled(model, fn, tier)  # every output checked against eager
    left = tier.timeline()["uncompiled"]
    assert left and all("differs by up to" in why for why in left.values()), left
    assert entry_index(tmp_path).refused
    # The next start runs those pieces uncompiled and compiles nothing.
    torch._dynamo.reset()
    caplog.clear()
    with counting() as deltas:
        backend2, fn2 = compile_model(model, config)
        args = inputs(TINY, 6)
        torch.testing.assert_close(
            run_fresh(model, fn2, args), run_fresh(model, model, args), **INDUCTOR_TOL
        )
    assert deltas.get("num_inductor_compiles", 0) == 0
    assert backend2.compiled[-1].tier is None
    assert any("runs uncompiled" in w for w in stitch_warnings(caplog))


# A script's start: the example llama's tiered start, one worker, one forward.
TIERED_SCRIPT = """
import json, os, sys, threading, time, torch
sys.path.insert(0, {tests!r})
from backend_support import TINY, compile_model, inputs, model_for, run_fresh
from stitch.runtime import CompilationConfig
model = model_for()
config = CompilationConfig(cache_dir={cache!r}, tiered_start=True, compile_workers=1)
backend, fn = compile_model(model, config)
run_fresh(model, fn, inputs(TINY, 4))
tier = backend.compiled[-1].tier
"""


EXITS_MID_COMPILE = TIERED_SCRIPT + """
deadline = time.monotonic() + 240
while not tier.timeline()["compiled_at"] and time.monotonic() < deadline:
    time.sleep(0.01)
print(json.dumps(sorted(tier.timeline()["compiled_at"])), flush=True)
os._exit(0)  # while the worker compiles the other pieces (sys.exit would wait)
"""


def run_script(template: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``template`` (naming the tests' folder and a cache) run in a fresh
    process with caches of its own under ``tmp_path``."""
    script = template.format(
        tests=str(Path(__file__).parent), cache=str(tmp_path / "cache")
    )
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_an_exit_mid_compile_leaves_the_next_start_only_what_is_missing(
    tmp_path: Path,
) -> None:
    done = run_script(EXITS_MID_COMPILE, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    landed = json.loads(done.stdout.strip().splitlines()[-1])
    assert landed
    index = entry_index(tmp_path / "cache")
    assert set(landed) <= set(index.pieces)
    model = model_for()
    torch._dynamo.reset()
    with counting() as deltas:
        # The compile counts below: the missing pieces compile in the call.
        backend, fn = compile_model(
            model,
            CompilationConfig(cache_dir=str(tmp_path / "cache"), tiered_start=False),
        )
        args = inputs(TINY, 4)
        got = run_fresh(model, fn, args)
    torch.testing.assert_close(got, run_fresh(model, model, args), **INDUCTOR_TOL)
    reports = [r for r in backend.compiled[-1].reports if not r.splitting]
    for report in reports:
        if report.name in index.pieces:
            assert report.cache in ("hit", "shared"), report
        else:
            assert report.cache in ("miss", "shared"), report
    assert deltas.get("num_cache_hits", 0) >= 1
    assert deltas.get("num_inductor_compiles", 0) < len(reports)


COMPILES_FROM_A_THREAD = """
import json, os, sys, threading, time, torch
sys.path.insert(0, {tests!r})
from backend_support import TINY, compile_model, inputs, model_for, run_fresh
from stitch.runtime import CompilationConfig
model = model_for()
config = CompilationConfig(cache_dir={cache!r}, tiered_start=True, compile_workers=1)
made = {{}}
def engine():  # an engine's thread: it starts the workers, then ends
    made["backend"], made["fn"] = compile_model(model, config)
    run_fresh(model, made["fn"], inputs(TINY, 4))
thread = threading.Thread(target=engine)
thread.start()
thread.join()
tier = made["backend"].compiled[-1].tier
deadline = time.monotonic() + 240
while not tier.settled and time.monotonic() < deadline:
    run_fresh(model, made["fn"], inputs(TINY, 4))
    time.sleep(0.05)
print(json.dumps(tier.timeline()["uncompiled"]), flush=True)
"""


def test_workers_started_by_a_thread_that_ends_compile_on(tmp_path: Path) -> None:
    # The kernel's parent-death signal follows the thread that forked: a
    # worker forked by an engine's thread died with it, its pieces uncompiled
    # (die_with_parent in workers/proc_family.py).
    done = run_script(COMPILES_FROM_A_THREAD, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not json.loads(done.stdout.strip().splitlines()[-1]), done.stderr[-3000:]
    assert "was killed by" not in done.stderr, done.stderr[-3000:]


ENGINE_EXITS_WHILE_IT_TRACES = """
import json, logging, sys, threading, torch
from stitch.runtime import CompilationConfig, StitchBackend
from stitch.runtime.cli.engine_job import (
    Workload, build_model, engine_fields, finished, greedy, prompts,
)
from stitch.runtime.hf import continuous_batching_config
from stitch.runtime.hf.saved_step import _compile_thread
logging.basicConfig(level=logging.INFO, format="%(message)s")
work = Workload(prompts=2, shortest=3, longest=9, new_tokens=4)
model = build_model(work)
tiered = sys.argv[1] == "tiered"
if sys.argv[1] == "eager":  # transformers' own engine, uncompiled
    from transformers import ContinuousBatchingConfig
    from stitch.runtime.hf.engine_compat import config_fields
    config = ContinuousBatchingConfig(**config_fields(dict(
        engine_fields(work), default_compile_level=0, max_blocks_per_request=0,
        auto_switch_to_flash=False,
    )))
else:
    backend = StitchBackend(CompilationConfig(cache_dir={cache!r}, tiered_start=tiered))
    config = continuous_batching_config(model, backend, **engine_fields(work))
held = threading.Event()
if tiered:  # the trace waits until the main thread has ended
    _compile_thread().submit(held.wait, 120)
with torch.no_grad():
    got = model.generate_batch(
        prompts(work), greedy(work.new_tokens), continuous_batching_config=config
    )
finished(got, sys.argv[1], len(got))
tokens = [o.generated_tokens for o in sorted(got.values(), key=lambda o: o.prompt_ids)]
print("TOKENS", json.dumps(tokens), flush=True)
if tiered:
    assert model.forward.compiling()
    threading.Timer(2.0, held.set).start()
print("MAIN ENDS", file=sys.stderr, flush=True)
"""


def test_an_engine_that_exits_while_it_traces_compiles_every_piece(
    tmp_path: Path,
) -> None:
    """NOTE: [a worker forked while its parent exits]: the trace ends during
    the interpreter's exit and forks its workers then; they compile every
    piece, and the next process loads the saved forward the exit wrote once
    they had landed (NOTE: [a process that exits normally waits for its
    workers]): no Dynamo, no compile."""
    from engine_support import skip_without_the_engine

    skip_without_the_engine()
    template = ENGINE_EXITS_WHILE_IT_TRACES  # the mode goes in the text
    done = run_script(template.replace("sys.argv[1]", '"tiered"'), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    after_main = done.stderr.split("MAIN ENDS", 1)[1]
    assert re.search(r"pieces compile in \d+ forked worker", after_main), done.stderr[
        -3000:
    ]
    assert "stays uncompiled" not in done.stderr, done.stderr[-3000:]
    again = run_script(template.replace("sys.argv[1]", '"cold"'), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "engine forward loaded warm" in again.stderr, again.stderr[-3000:]
    assert not re.search(r"stitch: graph \w+: \d+ pieces", again.stderr), again.stderr[
        -3000:
    ]
    # Eager's tokens, served while the first traced and from the saved forward.
    eager = run_script(template.replace("sys.argv[1]", '"eager"'), tmp_path)
    assert eager.returncode == 0, eager.stderr[-3000:]

    def tokens(done: subprocess.CompletedProcess[str]) -> Any:
        (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("TOKENS ")]
        return json.loads(line[len("TOKENS ") :])

    assert tokens(done) == tokens(again) == tokens(eager), done.stdout


def test_an_empty_buffer_output_is_not_compared() -> None:
    def f(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + 1, torch.empty_like(x).view(-1)

    graph = fx.symbolic_trace(f)
    assert unset_outputs(graph) == {1}


def test_transformers_engine_serves_eager_tokens_while_it_traces_and_swaps(
    tmp_path: Path,
) -> None:
    """NOTE: [the engine serves while Dynamo traces]: the engine's steps run the
    model's own forward until the trace is done, then the saved forward on
    uncompiled pieces, then the compiled ones; every request gets the eager
    engine's tokens, one of them across the switch."""
    from engine_support import skip_without_the_engine

    skip_without_the_engine()
    from stitch.runtime import StitchBackend
    from stitch.runtime.cli.engine_job import (
        Workload,
        build_model,
        engine_config,
        engine_fields,
        finished,
        greedy,
        prompts,
    )
    from stitch.runtime.hf import continuous_batching_config
    from stitch.runtime.hf.saved_step import _compile_thread

    work = Workload(prompts=4, shortest=1, longest=24, new_tokens=12)
    model = build_model(work)
    batch = prompts(work)
    fields = engine_fields(work)

    def generate(config: Any, requests: list[list[int]]) -> dict[tuple, list[int]]:
        with torch.no_grad():
            out = model.generate_batch(
                requests, greedy(work.new_tokens), continuous_batching_config=config
            )
        results = finished(out, "tiered", len(requests))
        return {tuple(o.prompt_ids): list(o.generated_tokens) for o in results}

    eager = generate(engine_config("eager", str(tmp_path), model, fields), batch)
    backend = StitchBackend(
        CompilationConfig(cache_dir=str(tmp_path), tiered_start=True)
    )
    config = continuous_batching_config(model, backend, **fields)
    forward = model.forward
    # The trace waits behind this until the fourth of the model's own steps,
    # which waits for the trace: the fifth step is the saved forward's.
    held = threading.Event()
    _compile_thread().submit(held.wait, SWAP_WAIT_S)
    own, original = [], forward.original

    def own_forward(*args: Any, **kwargs: Any) -> Any:
        own.append(kwargs["input_ids"].shape)
        if len(own) == 4:
            # What transformers 5.24's forward does to its model while it runs
            # (NOTE: [a trace beside the model's own forward]), during the trace.
            model.config.is_causal = False
            held.set()
            while forward.compiling():
                time.sleep(0.05)
            del model.config.is_causal
        return original(*args, **kwargs)

    forward.original = own_forward
    try:
        assert generate(config, batch) == eager  # before and after the trace
    finally:
        held.set()
    assert len(own) == 4, own
    assert not forward.compiling()
    assert [s.warm for s in forward.steps.values()] == [False]
    tiers = [c.tier for c in backend.compiled if c.tier is not None]
    assert tiers
    deadline = time.monotonic() + SWAP_WAIT_S
    while not all(t.settled for t in tiers):
        assert time.monotonic() < deadline, [t.timeline() for t in tiers]
        one = generate(config, batch[:1])  # during the swaps
        assert one == {tuple(batch[0]): eager[tuple(batch[0])]}
    assert all(not t.timeline()["uncompiled"] for t in tiers)
    assert generate(config, batch) == eager  # every piece compiled
    assert len(own) == 4  # no step of the model's own since the trace


def test_identical_layers_of_a_transformers_model_are_all_swapped(
    tmp_path: Path,
) -> None:
    pytest.importorskip("transformers")
    from stitch.runtime import StitchBackend
    from stitch.runtime.hf import build_model, example_inputs, output_tensor

    model = build_model("llama", layers=3)
    backend = StitchBackend(tiered(tmp_path, compile_workers=3))
    fn = torch.compile(model, backend=backend, dynamic=True)
    deadline = time.monotonic() + SWAP_WAIT_S
    n = 0
    with counting() as deltas, torch.no_grad():
        while n == 0 or not all(
            c.tier is None or c.tier.settled for c in backend.compiled
        ):
            assert time.monotonic() < deadline
            kwargs = example_inputs("llama", 2, 4 + n % 3, seed=n)
            torch.testing.assert_close(
                output_tensor("llama", fn(**kwargs)),
                output_tensor("llama", model(**kwargs)),
                **INDUCTOR_TOL,
            )
            n += 1
    (compiled,) = backend.compiled
    # Its three decoder layers are repeats: one compile (repeats go to one worker
    # of the three), every piece swapped.
    unique = set(compiled.tier.source.key_of.values())
    assert deltas["num_inductor_compiles"] == len(unique) < len(compiled.backends)
    assert set(compiled.tier.timeline()["swapped_at"]) == set(compiled.backends)
    assert all(type(b) is PiecewiseBackend for b in compiled.backends.values())
