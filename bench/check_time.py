"""How long ``stitch check`` takes to name a faulty piece, beside a cold compile
and beside torch's accuracy minifier on the same fault.

Usage::

    python bench/check_time.py                   # the 32-layer example
    python bench/check_time.py --layers 3 --cap 120
    python bench/check_time.py --repeat 3        # compile and check alternated

The fault: an Inductor pass that turns the first multiplication of the final
norm into an addition (tests/check_support.py's ``MulToAdd``), so exactly one
compiled piece (``layers.31.self_attn .. norm``) is wrong.  Every run is a
fresh process with empty Stitch and Inductor caches:

- ``compile``: Stitch's cold compile with the faulty pass, then two forwards
  per size: the budget the check is held to;
- ``check``: ``check_model`` with the same config and sizes, the pass search
  included; it must name that piece and that pass;
- ``minifier``: torch's accuracy minifier on the same fault, the model under
  ``torch.compile(backend="inductor")`` with the pass as Inductor's post-grad
  pass: first with ``TORCHDYNAMO_REPRO_AFTER=aot TORCHDYNAMO_REPRO_LEVEL=4``,
  which finds the accuracy failure and writes ``minifier_launcher.py``, then
  that launcher, which minifies; both within ``--cap`` seconds together
  (">cap" when they do not finish).

With ``--repeat N`` the compile and the check run N times each, alternated
(the machine's load drifts), and the table gives their medians.  Each child
also reads its phases from torch's ``compile_times()`` (Dynamo's compile, the
Stitch backend call in it, and the check's ``stitch_check_*`` runs), printed
below the table from the median run.

Results: docs/performance.md ("Finding the faulty piece").
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT = "CHECK_TIME_RESULT "
FAULTY_MODULE = "norm"


def _fault() -> Any:
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from check_support import MulToAdd

    return MulToAdd(FAULTY_MODULE)


def _forwards(cfg: Any, sizes: list[int]) -> list[Any]:
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from check_support import llama_forwards

    return llama_forwards(cfg, [(n, n) for n in sizes])


def _config(cfg: Any, cache_dir: str) -> Any:
    from stitch.runtime import CompilationConfig

    # The budget is the cold compile: a tiered start (the default on the CPU)
    # would serve before compiling, and the check turns it off anyway.
    return CompilationConfig(
        cache_dir=cache_dir,
        max_num_batched_tokens=cfg.max_seqs,
        inductor_passes=[_fault()],
        tiered_start=False,
    )


# What each child reads from torch's compile_times(): a label, and the
# dynamo_timed event whose times are summed under it.
# The check's runs on uncompiled pieces include the compile at their first
# call (the first compiled call is one of them): the parent takes it out.
PHASES = {
    "compile": "_compile.compile_inner",
    "backend": "OutputGraph.call_user_compiler",
    "eager": "stitch_check_eager",
    "reference": "stitch_check_reference",
    "pieces": "stitch_check_pieces",
    "restore": "stitch_check_restore",
    "search": "stitch_check_pass_search",
}


def _phases() -> dict[str, float]:
    """Seconds per phase of this process (PHASES), from torch's compile_times(),
    and "kernels": how many kernels the C++ compiler built."""
    from torch._dynamo.utils import compile_times

    headers, values = compile_times(repr="csv", aggregate=False)
    found = {
        key: [float(v) for v in text.split(", ") if v]
        for key, text in zip(headers, values, strict=True)
    }
    phases = {name: sum(found.get(key, [])) for name, key in PHASES.items()}
    phases["kernels"] = len(found.get("compile_file", []))  # one per kernel
    return phases


def child_compile(layers: int, sizes: list[int], cache_dir: str) -> dict[str, Any]:
    import torch

    from stitch.runtime import StitchBackend
    from stitch.runtime.examples import LlamaConfig, build_llama

    cfg = LlamaConfig(num_layers=layers)
    model = build_llama(cfg)
    forwards = _forwards(cfg, sizes)
    start = time.perf_counter()
    compiled = torch.compile(
        model, backend=StitchBackend(_config(cfg, cache_dir)), fullgraph=True
    )
    with torch.no_grad():
        compiled(*forwards[0].args)
        compile_s = time.perf_counter() - start
        for forward in forwards:
            for _ in range(2):
                compiled(*forward.args)
    seconds = time.perf_counter() - start
    return {"compile_s": compile_s, "seconds": seconds, "phases": _phases()}


def child_check(layers: int, sizes: list[int], cache_dir: str) -> dict[str, Any]:
    from stitch.runtime.check import check_model
    from stitch.runtime.examples import LlamaConfig, build_llama

    cfg = LlamaConfig(num_layers=layers)
    model = build_llama(cfg)
    forwards = _forwards(cfg, sizes)
    start = time.perf_counter()
    report = check_model(model, forwards, _config(cfg, cache_dir), fullgraph=True)
    seconds = time.perf_counter() - start
    first = report.first
    return {
        "seconds": seconds,
        "named": first.name if first else None,
        "modules": first.modules if first else None,
        "pass": first.passes if first else "",
        "pieces": len(report.pieces),
        "verdict": report.verdict(),
        "phases": _phases(),
    }


def child_minify_first(layers: int, sizes: list[int]) -> dict[str, Any]:
    """Under TORCHDYNAMO_REPRO_AFTER=aot, REPRO_LEVEL=4 (set by the parent)."""
    import torch

    from stitch.runtime.examples import LlamaConfig, build_llama
    from stitch.runtime.passes.post_grad_hook import PostGradPasses

    cfg = LlamaConfig(num_layers=layers)
    model = build_llama(cfg)
    torch._inductor.config.post_grad_custom_post_pass = PostGradPasses([_fault()])
    compiled = torch.compile(model, backend="inductor", fullgraph=True)
    error = ""
    try:
        with torch.no_grad():
            for forward in _forwards(cfg, sizes):
                compiled(*forward.args)
    except Exception as exc:  # noqa: BLE001 - the minifier's AccuracyError
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    return {"error": error}


CHILDREN = {"compile": child_compile, "check": child_check}


def _run_child(
    args: list[str], env: dict[str, str], cwd: str, timeout: float
) -> tuple[dict[str, Any] | None, float, str]:
    start = time.perf_counter()
    try:
        done = subprocess.run(
            args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start, "timed out"
    seconds = time.perf_counter() - start
    for line in done.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :]), seconds, ""
    return None, seconds, (done.stderr or done.stdout)[-2000:]


def _env(work: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDYNAMO_")}
    env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(work, "inductor")
    env.update(extra)
    return env


def measure(kind: str, layers: int, sizes: list[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"check-time-{kind}-") as work:
        command = [sys.executable, os.path.abspath(__file__), "--child", kind]
        command += ["--layers", str(layers), "--sizes", ",".join(map(str, sizes))]
        command += ["--cache-dir", os.path.join(work, "stitch")]
        result, wall, error = _run_child(command, _env(work), work, 3600)
        if result is None:
            raise SystemExit(f"{kind} failed: {error}")
        result["wall_s"] = wall
        return result


def minifier(layers: int, sizes: list[int], cap: float) -> dict[str, Any]:
    """torch's two steps on the same fault, within ``cap`` seconds together."""
    with tempfile.TemporaryDirectory(prefix="check-time-minifier-") as work:
        env = _env(work, TORCHDYNAMO_REPRO_AFTER="aot", TORCHDYNAMO_REPRO_LEVEL="4")
        command = [sys.executable, os.path.abspath(__file__), "--child", "minify"]
        command += ["--layers", str(layers), "--sizes", ",".join(map(str, sizes))]
        start = time.perf_counter()
        first, _, error = _run_child(command, env, work, cap)
        found = sorted(glob.glob(f"{work}/**/minifier_launcher.py", recursive=True))
        if first is None or not found:
            spent = time.perf_counter() - start
            if first is not None:
                why = (
                    f"finished in {spent:.1f} s without an accuracy failure or a "
                    f"minifier_launcher.py ({first['error'] or 'no error raised'})"
                )
            else:
                why = error
            return {"seconds": spent, "finished": False, "stage": "detect", "why": why}
        left = cap - (time.perf_counter() - start)
        launcher = [sys.executable, found[0]]
        try:
            done = subprocess.run(
                launcher,
                env=_env(work),
                cwd=os.path.dirname(found[0]),
                capture_output=True,
                text=True,
                timeout=max(left, 1.0),
            )
        except subprocess.TimeoutExpired:
            return {
                "seconds": time.perf_counter() - start,
                "finished": False,
                "stage": "minify",
                "why": f"minifier_launcher.py past the {cap:.0f} s cap",
            }
        repros = glob.glob(f"{work}/**/repro.py", recursive=True)
        return {
            "seconds": time.perf_counter() - start,
            "finished": True,
            "stage": "minify",
            "why": f"exit {done.returncode}, {len(repros)} repro.py written",
            "tail": (done.stderr or done.stdout)[-600:],
        }


def breakdown(compiled: dict[str, Any], checked: dict[str, Any]) -> list[tuple]:
    """Rows of (phase, seconds in the compile run, seconds in the check run)."""
    c, k = compiled["phases"], checked["phases"]
    runs = k["eager"] + k["reference"] + k["pieces"] + k["restore"] + k["search"]
    return [
        ("Dynamo + Stitch compile", c["compile"], k["compile"]),
        ("... of which the Stitch backend call", c["backend"], k["backend"]),
        ("kernels the C++ compiler built (the check's: its search's too)", c["kernels"],
         k["kernels"]),
        ("eager runs", None, k["eager"]),
        ("runs on uncompiled pieces (less the compile)", None,
         k["reference"] - k["compile"]),
        ("runs on compiled pieces, each beside its GraphModule", None, k["pieces"]),
        ("model state put back", None, k["restore"]),
        ("pass search", None, k["search"]),
        ("the rest (of the compile run: its forwards)",
         compiled["seconds"] - c["compile"], checked["seconds"] - runs),
        ("total", compiled["seconds"], checked["seconds"]),
    ]  # fmt: skip


def _cell(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median time (the lower one of two middles)."""
    return sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--sizes", default="1,8,32")
    parser.add_argument("--cap", type=float, default=600.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--skip-minifier",
        action="store_true",
        help="leave torch's minifier out (quote an earlier run's figure, dated)",
    )
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.child == "minify":
        print(RESULT + json.dumps(child_minify_first(args.layers, sizes)), flush=True)
        return 0
    if args.child:
        result = CHILDREN[args.child](args.layers, sizes, args.cache_dir)
        print(RESULT + json.dumps(result), flush=True)
        return 0
    from stitch.runtime.tables import markdown_table

    compiles, checks = [], []
    for _ in range(args.repeat):
        compiles.append(measure("compile", args.layers, sizes))
        checks.append(measure("check", args.layers, sizes))
    compiled, checked = _median(compiles), _median(checks)
    minified = None if args.skip_minifier else minifier(args.layers, sizes, args.cap)
    budget = compiled["seconds"]
    print(f"{args.layers}-layer example, sizes {args.sizes}, fault in {FAULTY_MODULE}")
    print(f"  check named: {checked['named']} ({checked['modules']})")
    print(f"  {checked['pass']}")
    if args.repeat > 1:
        for name, runs in (("compile + forwards", compiles), ("check", checks)):
            each = ", ".join(f"{r['seconds']:.1f}" for r in runs)
            print(f"  {name}, each run: {each} s")
    rows = [
        ("cold compile (first forward)", f"{compiled['compile_s']:.1f}", "-"),
        ("cold compile + 2 forwards per size", f"{budget:.1f}", "1.00"),
        ("stitch check (named piece and pass)", f"{checked['seconds']:.1f}",
         f"{checked['seconds'] / budget:.2f}"),
    ]  # fmt: skip
    if minified is not None:
        if minified["finished"]:
            minifier_s = f"{minified['seconds']:.1f}"
            ratio = f"{minified['seconds'] / budget:.2f}"
        elif minified["stage"] == "detect" and "finished in" in minified["why"]:
            minifier_s, ratio = f"no fault found, {minified['seconds']:.1f}", "-"
        else:
            minifier_s, ratio = f">{args.cap:.0f}", "-"
        rows.append(("torch accuracy minifier (detect + minify)", minifier_s, ratio))
    print("\n" + markdown_table(["run", "seconds", "/ budget"], rows, "lrr"))
    phases = [
        (name, *(_cell(v) for v in values))
        for name, *values in breakdown(compiled, checked)
    ]
    print("\nwhere the time goes (the median runs; torch's compile_times()):\n")
    print(
        markdown_table(["phase", "compile + forwards", "stitch check"], phases, "lrr")
    )
    if minified is not None:
        print(f"\nminifier: {minified['stage']}: {minified['why']}")
        if minified.get("tail"):
            print(minified["tail"])
    return 0 if checked["named"] else 1


if __name__ == "__main__":
    sys.exit(main())
