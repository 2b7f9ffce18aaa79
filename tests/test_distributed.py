"""Tensor parallelism: two gloo ranks on this machine compile the TP llama with Stitch.

Each job is launched with ``stitch.runtime.examples.tp.launch`` (spawned processes, a TCP
rendezvous on 127.0.0.1, a 60 s process-group timeout, a parent that kills every
rank on a failure or past its deadline).  The ranks do the work and return plain
data; the assertions run here, in the test process.

* The cold job compiles the TP model four ways (eager / Inductor pieces, each with
  the collectives inside the pieces or as splitting ops run eagerly between
  them) and runs it at several batch sizes next to the unsharded model.
* The warm job starts both ranks again from the cache the cold job wrote.
* The golden file ``golden/test_distributed/tp2_eager_collectives.py`` holds the
  stitching source of rank 0's TP model with its collectives run eagerly between
  the pieces (``make_fx``, symbolic token count); rank 1 emits the same source,
  and the warm job runs the golden file on both ranks.  With the collectives
  inside the pieces the stitching source is the unsharded model's (checked
  against it, below the header): golden/test_golden/llama_dynamic_batch.py
  already pins that source.

Update the goldens after an intended change with::

    python -m pytest tests/test_distributed.py --snapshot-update
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.fx as fx
from conftest import GOLDEN_DIR, UPDATE_COMMAND

from stitch.codegen import generate_execution_code, split_graph
from stitch.core.errors import StitchConfigError, StitchRuntimeError
from stitch.runtime import (
    CompilationConfig,
    StitchBackend,
    compilation_counter,
    compile_execution_fn,
)
from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs
from stitch.runtime.examples.tp import (
    EAGER_COLLECTIVE_SPLITTING_OPS,
    IN_PIECE_SPLITTING_OPS,
    check_divisible,
    launch,
    shard_state_dict,
    trace_tp,
)

WORLD = 2
CFG = LlamaConfig(
    vocab_size=128,
    hidden_size=64,
    num_heads=4,
    num_layers=2,
    intermediate_size=128,
    max_seqs=32,
    max_len=16,
)
COMPILE_SIZE = 8  # the first call's batch; its token dimension is marked dynamic
RUN_SIZES = (COMPILE_SIZE, 3, 17, 32)
BACKENDS = ("eager", "inductor")
MODES: dict[str, tuple[str, ...]] = {
    "in_piece": IN_PIECE_SPLITTING_OPS,
    "eager_collectives": EAGER_COLLECTIVE_SPLITTING_OPS,
}
CONFIGS = [f"{b}/{m}" for b in BACKENDS for m in MODES]
# NOTE: [one TP golden]
# Only the eager collectives change the stitching source; collectives inside
# the pieces leave it the unsharded model's, which test_golden pins, so that
# mode is checked against the unsharded model rather than kept as a second copy.
GOLDEN_CASES = {f"tp{WORLD}_eager_collectives": "eager_collectives"}
GOLDEN_MODULE_DIR = GOLDEN_DIR / Path(__file__).stem
JOB_TIMEOUT = 240.0
# A different reduction order (two partial sums, then the all-reduce) moves
# float32 results by ~1e-6; a wrong shard or a missing all-reduce moves them O(1).
TOL = {"rtol": 1e-4, "atol": 1e-4}
FUNCTIONAL_NS = "_c10d_functional::"


# --------------------------------------------------------------------------------
# What the ranks run.  Module level, so spawn can import them by name.
# --------------------------------------------------------------------------------


def _models() -> tuple[Any, Any]:
    from stitch.runtime.examples.tp import build_tp_llama

    return build_tp_llama(CFG, seed=0)


def _inputs(n: int, mark: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ids, pos = llama_inputs(CFG, n, seed=n)
    if mark:
        torch._dynamo.mark_dynamic(ids, 0)
        torch._dynamo.mark_dynamic(pos, 0)
    return ids, pos


def _fresh(
    model: Any, fn: Callable[..., Any], n: int, mark: bool = False
) -> torch.Tensor:
    model.reset_kv_caches()
    with torch.no_grad():
        return fn(*_inputs(n, mark))


def _collective_placement(split_gm: fx.GraphModule) -> dict[str, list[str]]:
    """``{"splitting": [...], "compiled": [...]}``: collective ops per kind of piece."""
    placement: dict[str, list[str]] = {"splitting": [], "compiled": []}
    for _, sub in split_gm.named_children():
        kind = "splitting" if sub.meta.get("stitch_is_splitting_graph") else "compiled"
        for node in sub.graph.nodes:
            if node.op != "call_function":
                continue
            name = getattr(node.target, "_qualified_op_name", None) or getattr(
                getattr(node.target, "_schema", None), "name", ""
            )
            if name.startswith(FUNCTIONAL_NS):
                placement[kind].append(name)
    return placement


def _compile_and_run(model: Any, config: CompilationConfig) -> dict[str, Any]:
    torch._dynamo.reset()
    backend = StitchBackend(config)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    before = compilation_counter.snapshot()
    outputs = {n: _fresh(model, compiled, n, mark=n == COMPILE_SIZE) for n in RUN_SIZES}
    after = compilation_counter.snapshot()
    (result,) = backend.compiled
    return {
        "outputs": outputs,
        "deltas": {k: after[k] - before[k] for k in after},
        "cache_dir": result.cache_dir,
        "warm": result.warm,
        "reports": [(r.name, r.splitting, r.cache) for r in result.reports],
        "collectives": _collective_placement(result.split_gm),
    }


def _emit(
    gm: fx.GraphModule, splitting_ops: tuple[str, ...]
) -> tuple[str, fx.GraphModule, Any]:
    split_gm, _ = split_graph(gm, list(splitting_ops))
    code, submod_names, consts = generate_execution_code(split_gm)
    return code, split_gm, (submod_names, consts)


def cold_job(rank: int, world_size: int, cache_root: str) -> dict[str, Any]:
    full, model = _models()
    result: dict[str, Any] = {
        "unsharded": {n: _fresh(full, full, n) for n in RUN_SIZES},
        "tp_eager": {n: _fresh(model, model, n) for n in RUN_SIZES},
        "configs": {},
        "golden": {},
        "sources": {},
    }
    for name in CONFIGS:
        backend, mode = name.split("/")
        # Compiled in the backend call: the tests count compiles and read
        # each rank's entry, then start warm from it.
        config = CompilationConfig(
            cache_dir=cache_root,
            backend=backend,
            splitting_ops=list(MODES[mode]),
            tiered_start=False,
        )
        result["configs"][name] = _compile_and_run(model, config)
    gm = trace_tp(model, _inputs(COMPILE_SIZE, mark=False))
    for case, mode in GOLDEN_CASES.items():
        result["golden"][case] = _emit(gm, MODES[mode])[0]
    unsharded_gm = trace_tp(full, _inputs(COMPILE_SIZE, mark=False))
    for mode, ops in MODES.items():
        result["sources"][mode] = {
            "tp": _emit(gm, ops)[0],
            "unsharded": _emit(unsharded_gm, ops)[0],
        }
    return result


def warm_job(
    rank: int, world_size: int, cache_root: str, golden_dir: str
) -> dict[str, Any]:
    from stitch.runtime.pipeline.compilers import InductorAdapter

    # Record every artifact this rank loads, to show whose files they are.
    loaded: list[str] = []
    original_load = InductorAdapter.load

    def recording_load(self: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        loaded.append(path)
        return original_load(self, path, *args, **kwargs)

    InductorAdapter.load = recording_load  # type: ignore[method-assign]
    full, model = _models()
    result: dict[str, Any] = {"configs": {}, "loaded": {}, "golden_runs": {}}
    for mode, ops in MODES.items():
        loaded.clear()
        config = CompilationConfig(
            cache_dir=cache_root,
            backend="inductor",
            splitting_ops=list(ops),
            tiered_start=False,
        )
        result["configs"][mode] = _compile_and_run(model, config)
        result["loaded"][mode] = list(loaded)
    # The golden files, loaded and bound to this rank's pieces, run the TP model.
    gm = trace_tp(model, _inputs(COMPILE_SIZE, mark=False))
    for case, mode in GOLDEN_CASES.items():
        path = Path(golden_dir) / f"{case}.py"
        if not path.exists():
            result["golden_runs"][case] = None
            continue
        _, split_gm, (submod_names, consts) = _emit(gm, MODES[mode])
        fn = compile_execution_fn(
            path.read_text(encoding="utf-8"),
            dict(split_gm.named_children()),
            submod_names,
            consts,
        )
        result["golden_runs"][case] = {
            n: (_fresh(model, fn, n), _fresh(model, split_gm, n), _fresh(full, full, n))
            for n in RUN_SIZES
        }
    return result


def failing_compile_job(rank: int, world_size: int) -> None:
    """Rank 1 cannot compile (an Inductor option that does not exist); rank 0 can."""
    _, model = _models()
    if rank == 1:
        # Its compile fails in the backend call (tiered_start=False).
        config = CompilationConfig(
            backend="inductor", disable_cache=True, tiered_start=False
        )
        # Set after construction, which would reject the option: the point here
        # is a rank whose compile fails.
        config.inductor_compile_config = {"stitch_test_no_such_option": True}
    else:
        # Eager pieces: rank 0 is soon waiting and leaves the CPU to rank 1.
        config = CompilationConfig(backend="eager", disable_cache=True)
    compiled = torch.compile(model, backend=StitchBackend(config), fullgraph=True)
    # Rank 0 compiles, then waits in the first all-reduce for a rank that is gone.
    _fresh(model, compiled, COMPILE_SIZE, mark=True)


def stuck_rank_job(rank: int, world_size: int) -> None:
    """Rank 1 never joins the collective rank 0 waits in."""
    from torch.distributed import _functional_collectives as funcol

    if rank == 1:
        time.sleep(600)
    funcol.all_reduce(torch.ones(4), "sum", torch.distributed.group.WORLD).wait()


# --------------------------------------------------------------------------------
# The jobs, once per module.
# --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tp-cache")


@pytest.fixture(scope="module")
def cold(cache_root: Path) -> list[dict[str, Any]]:
    return launch(cold_job, WORLD, (str(cache_root),), timeout=JOB_TIMEOUT)


@pytest.fixture(scope="module")
def warm(cold: list[dict[str, Any]], cache_root: Path) -> list[dict[str, Any]]:
    # NOTE: [the warm job reads the goldens]
    # Requested first by a test after the golden comparisons, so a run with
    # --snapshot-update writes the goldens before the ranks load them.
    return launch(
        warm_job, WORLD, (str(cache_root), str(GOLDEN_MODULE_DIR)), timeout=JOB_TIMEOUT
    )


# --------------------------------------------------------------------------------
# Sharding (no process group needed).
# --------------------------------------------------------------------------------


def test_shards_reassemble_to_the_unsharded_weights() -> None:
    full = build_llama(CFG).state_dict()
    shards = [shard_state_dict(full, CFG, r, WORLD) for r in range(WORLD)]
    h, inter, heads = CFG.hidden_size, CFG.intermediate_size, CFG.num_heads
    for name, value in full.items():
        parts = [s[name] for s in shards]
        if name.endswith("qkv_proj.weight"):
            # Each rank holds [q, k, v] of its heads: rank r's heads r*H/2 .. .
            blocks = [p.reshape(3, heads // WORLD, h // heads, h) for p in parts]
            rebuilt = torch.cat(blocks, dim=1).reshape(3 * h, h)
        elif name.endswith("gate_up_proj.weight"):
            blocks = [p.reshape(2, inter // WORLD, h) for p in parts]
            rebuilt = torch.cat(blocks, dim=1).reshape(2 * inter, h)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            rebuilt = torch.cat(parts, dim=1)
        elif name.endswith(("k_cache", "v_cache")):
            rebuilt = torch.cat(parts, dim=2)
        else:
            assert all(
                torch.equal(p, value) for p in parts
            ), f"{name} is not replicated"
            continue
        assert parts[0].shape != value.shape, f"{name} was not sharded"
        assert torch.equal(rebuilt, value), name


def test_sizes_that_do_not_divide_are_refused() -> None:
    with pytest.raises(
        StitchConfigError, match=r"num_heads=4 is not divisible by tp_size=3"
    ):
        check_divisible(CFG, 3)
    with pytest.raises(StitchConfigError, match=r"rank=2 is outside"):
        shard_state_dict(build_llama(CFG).state_dict(), CFG, 2, WORLD)


# --------------------------------------------------------------------------------
# The cold job: four ways to compile, one answer.
# --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_tp_matches_unsharded_model(cold: list[dict[str, Any]], config: str) -> None:
    backend = config.split("/")[0]
    for rank, result in enumerate(cold):
        for n in RUN_SIZES:
            out = result["configs"][config]["outputs"][n]
            torch.testing.assert_close(
                out,
                result["unsharded"][n],
                **TOL,
                msg=lambda m, rank=rank, n=n: f"rank {rank}, n={n}: {m}",
            )
            if backend == "eager":
                # Dynamo's graph run piece by piece: the same kernels and the same
                # collectives in the same order as the uncompiled TP model.
                assert torch.equal(out, result["tp_eager"][n]), (rank, n)
        # Every rank ends with the same full (all-reduced) hidden state.
        for n in RUN_SIZES:
            assert torch.equal(
                result["configs"][config]["outputs"][n],
                cold[0]["configs"][config]["outputs"][n],
            ), (rank, n)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_collectives_run_where_the_config_puts_them(
    cold: list[dict[str, Any]], config: str
) -> None:
    mode = config.split("/")[1]
    # Two all-reduces per layer, each recorded by Dynamo as all_reduce + wait_tensor.
    expected = ["_c10d_functional::all_reduce", "_c10d_functional::wait_tensor"] * (
        2 * CFG.num_layers
    )
    for result in cold:
        placement = result["configs"][config]["collectives"]
        inside = "compiled" if mode == "in_piece" else "splitting"
        outside = "splitting" if mode == "in_piece" else "compiled"
        assert placement[inside] == expected
        assert placement[outside] == []
        if mode == "eager_collectives":
            # NOTE: each all_reduce shares one eager piece with its wait_tensor
            # (consecutive splitting ops share a piece): 2 per layer, plus attention.
            splitting = [r for r in result["configs"][config]["reports"] if r[1]]
            assert len(splitting) == 3 * CFG.num_layers


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_one_backend_compile_for_every_batch_size(
    cold: list[dict[str, Any]], config: str
) -> None:
    backend = config.split("/")[0]
    for result in cold:
        deltas = result["configs"][config]["deltas"]
        assert deltas["num_backend_compilations"] == 1
        if backend == "inductor":
            assert deltas["num_inductor_compiles"] > 0
            assert (
                deltas["num_compiled_artifacts_saved"]
                == deltas["num_inductor_compiles"]
            )
        else:
            assert deltas["num_inductor_compiles"] == 0


@pytest.mark.slow
def test_each_rank_writes_only_its_own_cache_directory(
    cold: list[dict[str, Any]], cache_root: Path
) -> None:
    owned: dict[int, set[Path]] = {}
    for rank, result in enumerate(cold):
        dirs = {Path(c["cache_dir"]) for c in result["configs"].values()}
        assert all(
            d.name == f"rank_{rank}" and d.parent.parent == cache_root for d in dirs
        )
        owned[rank] = dirs
    # The same graph and config give the same entry key on every rank; only the
    # rank directory differs.
    assert {d.parent for d in owned[0]} == {d.parent for d in owned[1]}
    files = [p for p in cache_root.rglob("*") if p.is_file()]
    assert files
    for path in files:
        owners = [
            r for r, dirs in owned.items() if any(d in path.parents for d in dirs)
        ]
        assert (
            len(owners) == 1
        ), f"{path.relative_to(cache_root)} is not in one rank's directory"
    assert not [p for p in files if p.name.startswith(".tmp-")], "temporary files left"


# --------------------------------------------------------------------------------
# Golden files: rank 0's stitching source, the same on rank 1.
# --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", list(GOLDEN_CASES))
def test_golden_tp(cold: list[dict[str, Any]], case: str, golden: Any) -> None:
    golden(cold[0]["golden"][case])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(GOLDEN_CASES))
def test_every_rank_emits_the_same_source(
    cold: list[dict[str, Any]], case: str
) -> None:
    assert all(r["golden"][case] == cold[0]["golden"][case] for r in cold)


def _runs(text: str, op: str) -> int:
    """How often execution_fn runs ``op``: directly, or through a function calling it."""
    tree = ast.parse(text)
    callers = {
        f.name
        for f in tree.body
        if isinstance(f, ast.FunctionDef) and f"{op}(" in ast.unparse(f)
    } - {"execution_fn"}
    (main,) = [f for f in tree.body if getattr(f, "name", "") == "execution_fn"]
    return sum(
        isinstance(n, ast.Call) and ast.unparse(n.func) in callers | {op}
        for n in ast.walk(main)
    )


def test_golden_eager_collectives_are_inlined() -> None:
    text = (GOLDEN_MODULE_DIR / f"tp{WORLD}_eager_collectives.py").read_text()
    # Each collective op is bound once at module level and called by its alias.
    for op in ("all_reduce", "wait_tensor"):
        alias = f"_c10d_functional_{op} = torch.ops._c10d_functional.{op}.default"
        assert alias in text.splitlines()
        assert _runs(text, f"_c10d_functional_{op}") == 2 * CFG.num_layers


def _below_header(text: str) -> str:
    """The source without its header comments (graph hash, constants' shapes:
    the TP model's weights are shards)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_only_eager_collectives_change_the_stitching(
    cold: list[dict[str, Any]], mode: str
) -> None:
    """See NOTE: [one TP golden]."""
    for rank, result in enumerate(cold):
        emitted = result["sources"][mode]
        assert emitted["tp"] == cold[0]["sources"][mode]["tp"], rank
        tp, unsharded = _below_header(emitted["tp"]), _below_header(
            emitted["unsharded"]
        )
        if mode == "in_piece":
            assert "_c10d_functional" not in emitted["tp"]
            assert tp == unsharded, rank
        else:
            assert "_c10d_functional" in emitted["tp"]
            assert tp != unsharded, rank


# --------------------------------------------------------------------------------
# The warm job: both ranks start again from their own cache directories.
# --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_warm_start_loads_each_ranks_own_artifacts(
    cold: list[dict[str, Any]], warm: list[dict[str, Any]], mode: str
) -> None:
    for rank, result in enumerate(warm):
        run = result["configs"][mode]
        cold_run = cold[rank]["configs"][f"inductor/{mode}"]
        assert run["deltas"]["num_inductor_compiles"] == 0
        assert run["deltas"]["num_cache_misses"] == 0
        assert run["deltas"]["num_cache_faults"] == 0
        assert (
            run["deltas"]["num_cache_hits"]
            == cold_run["deltas"]["num_inductor_compiles"]
        )
        # Every compiled piece came from this rank's cache ("shared": a repeat of a
        # piece that did).  CompiledModel.warm is not used: it counts a repeat as
        # not warm.
        states = {state for _, splitting, state in run["reports"] if not splitting}
        assert "hit" in states and states <= {"hit", "shared"}, run["reports"]
        assert run["cache_dir"] == cold_run["cache_dir"]
        own = Path(run["cache_dir"])
        assert own.name == f"rank_{rank}"
        assert (
            len(result["loaded"][mode])
            == run["deltas"]["num_compiled_artifacts_loaded"]
            > 0
        )
        for path in result["loaded"][mode]:
            assert own in Path(path).parents, f"rank {rank} loaded {path}"
        for n in RUN_SIZES:
            torch.testing.assert_close(
                run["outputs"][n], cold[rank]["unsharded"][n], **TOL
            )


@pytest.mark.slow
@pytest.mark.parametrize("case", list(GOLDEN_CASES))
def test_golden_tp_runs(warm: list[dict[str, Any]], case: str) -> None:
    """The golden file, bound to each rank's pieces, computes the unsharded model."""
    for rank, result in enumerate(warm):
        runs = result["golden_runs"][case]
        if runs is None:
            pytest.fail(
                f"golden/{GOLDEN_MODULE_DIR.name}/{case}.py is missing; create it with "
                + UPDATE_COMMAND.format(module="tests/test_distributed.py"),
                pytrace=False,
            )
        for n, (stitched, pieces, unsharded) in runs.items():
            # Same kernels in the same order: the stitched function is bit-exact.
            assert torch.equal(stitched, pieces), (rank, n)
            torch.testing.assert_close(stitched, unsharded, **TOL)


# --------------------------------------------------------------------------------
# Failures end the job with the failing rank's error instead of hanging.
# --------------------------------------------------------------------------------


@pytest.mark.slow
def test_rank_that_fails_to_compile_ends_the_job() -> None:
    with pytest.raises(StitchRuntimeError) as info:
        launch(failing_compile_job, WORLD, timeout=JOB_TIMEOUT)
    message = str(info.value)
    assert "rank 1 of a 2-rank job failed first" in message
    assert "Inductor failed to compile a piece" in message
    assert "stitch_test_no_such_option" in message
    assert "still running" not in message  # ended by the failure, not the deadline


@pytest.mark.slow
def test_process_group_timeout_ends_a_stuck_collective() -> None:
    with pytest.raises(StitchRuntimeError) as info:
        launch(
            stuck_rank_job, WORLD, timeout=JOB_TIMEOUT, pg_timeout=timedelta(seconds=3)
        )
    message = str(info.value)
    assert "rank 0 of a 2-rank job failed first" in message
    assert "still running" not in message


@pytest.mark.slow
def test_job_past_its_deadline_is_killed() -> None:
    with pytest.raises(
        StitchRuntimeError, match=r"ranks \[0, 1\] of a 2-rank job were still"
    ):
        launch(stuck_rank_job, WORLD, timeout=8.0, pg_timeout=timedelta(seconds=300))


def test_launch_checks_world_size() -> None:
    with pytest.raises(StitchConfigError, match="world_size=0"):
        launch(stuck_rank_job, 0)
