"""Shared fixtures: the ``golden`` file comparison (syrupy).

Goldens live in ``golden/<test-module>/<case>.py`` at the repository root, one
emitted module per case, compared byte for byte.  Update them with::

    python -m pytest tests/test_golden.py --snapshot-update

syrupy fails the run on a golden file no test used (an orphan) whenever the
whole golden module runs; ``--snapshot-update`` deletes orphans.  Under
pytest-xdist (the default run, see pyproject.toml) the workers run the tests and
the controller decides about orphans (NOTE: [goldens under xdist]).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode
from syrupy.location import PyTestLocation

# NOTE: [the suite runs the defaults]
# A backend call on the CPU starts tiered by default, its compile workers
# serving first (NOTE: [where a tiered start is the default] in
# runtime/pipeline/tiered/deferred.py, NOTE: [serving first]), and the suite
# runs that default: no switch here turns it off.  A test that checks compiled
# pieces or compile counts (counters, warm and cold pieces, cache entries,
# warm starts, goldens, profiles) says tiered_start=False in its config, or
# its helper does; one that checks what users get (eager's numbers, tokens, a
# server's answers) runs the defaults.


# NOTE: [a test's compile workers end with it]
# A test that runs the defaults may return while its compile workers still
# compile (a tiered start).  Their pieces would land later, in this process,
# and with them their counts (compilation_counter is the process's): in the
# counts of whichever test runs then.  So each test ends as a process does
# (NOTE: [a process that exits normally waits for its workers]): it waits
# for its workers to land or give up every piece.  A test whose workers are
# still at it after WORKERS_WAIT_S fails.
WORKERS_WAIT_S = 600.0


@pytest.fixture(autouse=True)
def _compile_workers_end_with_the_test() -> Iterator[None]:
    yield
    # No tiered start without this module: nothing to wait for (and no
    # import of torch for the tests that never needed it).
    if "stitch.runtime.workers.exit_wait" not in sys.modules:
        return
    from stitch.runtime import wait_compiled

    if not wait_compiled(WORKERS_WAIT_S):
        pytest.fail(
            f"compile workers of this test still compile {WORKERS_WAIT_S:.0f} s "
            "after it ended (NOTE: [a test's compile workers end with it])",
            pytrace=False,
        )


REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO_ROOT / "golden"
UPDATE_COMMAND = "python -m pytest {module} --snapshot-update"

# NOTE: [goldens under xdist]
# Whether a test module ran only in part (-k, -m, --deselect, a ::node id) is
# known where tests are collected: in this process, or in each xdist worker.
# syrupy decides about orphans on the xdist controller, which collects nothing
# and hands GoldenExtension stand-ins for the workers' items (no .config); so
# the partial modules live in this module, and each worker sends its set to
# the controller (config.workeroutput -> pytest_testnodedown), before syrupy's
# pytest_sessionfinish looks for orphans.  Every worker collects and deselects
# the same tests, so any one worker's set is the whole answer.
_PARTIAL_MODULES: set[str] = set()
_WORKER_OUTPUT_KEY = "stitch_partial_modules"


def _module_key(path: Path | str) -> str:
    return str(Path(path).resolve())


def pytest_configure(config: pytest.Config) -> None:
    _PARTIAL_MODULES.clear()


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        _PARTIAL_MODULES.add(_module_key(item.path))


def pytest_collection_finish(session: pytest.Session) -> None:
    base = session.config.invocation_params.dir
    for arg in session.config.args:
        if "::" in arg:
            module = arg.split("::", 1)[0]
            _PARTIAL_MODULES.add(_module_key(base / module))
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker
        workeroutput[_WORKER_OUTPUT_KEY] = sorted(_PARTIAL_MODULES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object | None) -> None:
    """On the xdist controller: the partial modules a worker found."""
    _PARTIAL_MODULES.update(
        getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT_KEY, ())
    )


@pytest.fixture(scope="module")
def dynamo_state() -> Iterator[None]:
    """A fresh Dynamo for a module whose tests compile one forward many times.

    Requested with ``pytestmark = pytest.mark.usefixtures("dynamo_state")``.
    """
    import torch

    # NOTE: [many compiles of one forward]
    # Every test of such a module compiles the same forward with its own backend
    # object; Dynamo keeps one cache entry per backend and refuses the 9th
    # (recompile_limit 8, a hard error under fullgraph=True).  Resetting between
    # tests would also drop the module fixtures' compiled models, so the limit
    # is raised instead; unexpected recompiles still show in
    # num_backend_compilations.
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=64):
        yield
    torch._dynamo.reset()


# NOTE: [CI's extended tests]
# The README's suite must run in 10 minutes on two cores.  The modules below
# start whole processes, servers, replicas and Inductor compiles one after
# another; with the documentation pages' blocks they took most of the
# suite's CPU time on 2026-11-26 (docs/development.md has the figures).  They carry the ``extended`` mark and are
# skipped unless STITCH_EXTENDED=1; .ci/run runs them in a step of their own
# after the README's suite (``STITCH_EXTENDED=1 pytest -m extended``), as
# are the documentation pages' runnable blocks (README.md's stay).
# .ci/vllm.sh and scripts/gpu_check.sh set the variable; .ci/torch_versions.sh
# runs the README's set on torch 2.11 and 2.15, and sets it for its slow run
# of the AOT, warm-start and cache-guard modules only (every module on both
# releases took CI past 70 minutes).  Nothing is left out of CI.
# test_distributed.py stays: its golden (two ranks) would count as unused
# in a suite that skipped it.
EXTENDED_MODULES = frozenset(
    {
        "test_aot.py",
        "test_aot_cudagraphs.py",
        "test_cache_extras.py",
        "test_cache_guards.py",
        "test_cache_processes.py",
        "test_check_hf.py",
        "test_compile_sizes.py",
        "test_fleet_cache.py",
        "test_hf_decode.py",
        "test_hf_engine.py",
        "test_hf_longcat.py",
        "test_hf_serve.py",
        "test_hf_serve_requests.py",
        "test_hf_stitch.py",
        "test_input_check.py",
        "test_spawned_pool.py",
        "test_stop_while_compiling.py",
        "test_tiered.py",
        "test_tiered_default.py",
        "test_tiered_sandbox.py",
        "test_tiered_spawn.py",
        "test_warm_start.py",
    }
)
# The documentation pages' runnable blocks (tests/test_readme.py's ids name the
# page); README.md's own blocks stay in the README's suite.
EXTENDED_BLOCKS = re.compile(r"test_readme_block_runs_as_written\[docs/")
EXTENDED = os.environ.get("STITCH_EXTENDED", "") == "1"

# NOTE: [one run of a torch release]
# .ci/torch_versions.sh runs, on each other torch, the README's set without its
# slow tests, and the slow tests of a few modules (SLOW_TESTS there), extended
# or not.  Two pytest runs did that, each starting its xdist workers and each
# ending with one worker idle while the other finished its last module.
# STITCH_SLOW_MODULES (file names, space-separated) makes it one run of the
# same tests: a slow test runs only in those modules, where it runs even if
# its module is extended; every other test runs as in the README's suite.
SLOW_MODULES = frozenset(
    Path(name).name for name in os.environ.get("STITCH_SLOW_MODULES", "").split()
)


def _slow_here(item: pytest.Item) -> bool:
    """A slow test of STITCH_SLOW_MODULES (NOTE: [one run of a torch release])."""
    return (
        item.path.name in SLOW_MODULES and item.get_closest_marker("slow") is not None
    )


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark the extended modules' tests as they are collected (``-m`` selects
    after)."""
    marked = item.get_closest_marker("extended") is not None
    if marked or item.path.name in EXTENDED_MODULES or EXTENDED_BLOCKS.match(item.name):
        item.add_marker(pytest.mark.extended)
        if not EXTENDED and not _slow_here(item):
            # Its goldens are not orphans (NOTE: [goldens under xdist]).
            _PARTIAL_MODULES.add(_module_key(item.path))
            item.add_marker(
                pytest.mark.skip(
                    reason="extended: STITCH_EXTENDED=1 runs it (.ci/run does)"
                )
            )


# NOTE: [heaviest modules first]
# The default run gives whole modules to two xdist workers (pyproject.toml's
# addopts), in collection order.  The modules that take longest go first, so
# that no long one is left to run alone at the end while the other worker
# idles.  Ranked by their --durations on the 2-core CI machine; a module not
# named keeps its place after them.  Only the order changes, in every run.
# The extended step's heaviest come first (the README's suite skips them, so
# their place costs it nothing): the server's soak module above all, three
# minutes in .ci/run's extended step (NOTE: [CI's extended tests]).
HEAVIEST_MODULES = (
    "test_hf_serve_requests.py",
    "test_stop_while_compiling.py",
    "test_tiered.py",
    "test_tiered_default.py",
    "test_fleet_cache.py",
    "test_hf_longcat.py",
    "test_hf.py",
    "test_hf_stitch.py",
    "test_distributed.py",
    "test_cache.py",
    "test_backend.py",
    "test_cache_processes.py",
    "test_aot.py",
    "test_aot_cudagraphs.py",
    "test_cache_extras.py",
    "test_readme.py",
    "test_cache_locations.py",
    "test_warm_start.py",
    "test_cache_index.py",
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if SLOW_MODULES:  # NOTE: [one run of a torch release]
        kept, dropped = [], []
        for item in items:
            elsewhere = item.path.name not in SLOW_MODULES
            slow = item.get_closest_marker("slow") is not None
            (dropped if slow and elsewhere else kept).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept
    rank = {name: i for i, name in enumerate(HEAVIEST_MODULES)}
    # A stable sort: tests keep their order within a module (fixture reuse).
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def _case_id(test_location: PyTestLocation) -> str:
    """``test_golden[llama]`` -> ``llama``; an unparametrized test keeps its name."""
    m = re.fullmatch(r"[^\[]*\[(.+)\]", test_location.testname)
    return m.group(1) if m else test_location.methodname


class GoldenExtension(SingleFileSnapshotExtension):
    """One ``.py`` file per test: ``golden/<test-module>/<case>.py``.

    Binary mode: the file's bytes are compared, newlines included (text mode
    would read ``\r\n`` as ``\n``).
    """

    file_extension = "py"
    _write_mode = WriteMode.BINARY

    @classmethod
    def dirname(cls, *, test_location: PyTestLocation) -> str:
        return str(GOLDEN_DIR / test_location.basename)

    @classmethod
    def get_snapshot_name(cls, *, test_location: PyTestLocation, index: Any = 0) -> str:
        if index:
            raise ValueError("a golden test compares exactly one file")
        return cls._sanitize_filename(_case_id(test_location))

    @classmethod
    def matches_test_location(
        cls, *, test_location: PyTestLocation, snapshot_location: str
    ) -> bool:
        # NOTE: [which test owns a golden file]
        # syrupy asks this when it looks for orphans.  A file belongs to the test
        # of its case; when the whole test module was selected, any file in the
        # module's golden directory counts as the module's, so an orphan fails
        # `pytest tests/test_golden.py` too, not only a bare `pytest`.  A partial
        # selection (-k, -m, --deselect, a ::node id) never flags other files.
        path = Path(snapshot_location)
        if path.parent != Path(cls.dirname(test_location=test_location)):
            return False
        if path.stem == cls.get_snapshot_name(test_location=test_location):
            return True
        return _module_key(test_location.item.path) not in _PARTIAL_MODULES

    def diff_lines(self, serialized_data: Any, snapshot_data: Any) -> Any:
        # The fixture below prints its own unified diff; syrupy's would repeat it.
        return iter(())


@pytest.fixture
def golden(snapshot: Any, request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``golden(text)`` compares ``text`` with this test's golden file.

    On a mismatch the failure shows a unified diff (golden file -> emitted text),
    the golden file's path and the command that rewrites it.
    """
    assertion = snapshot.use_extension(GoldenExtension)

    def check(text: str) -> None:
        location = Path(
            assertion.extension.get_location(
                test_location=assertion.test_location, index=0
            )
        )
        if assertion == text.encode("utf-8"):
            return
        relative = location.relative_to(REPO_ROOT)
        module = Path(request.node.path).relative_to(REPO_ROOT)
        if location.exists():
            expected = location.read_bytes().decode("utf-8", errors="replace")
            diff = "".join(
                difflib.unified_diff(
                    expected.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    fromfile=f"{relative} (golden)",
                    tofile=f"{relative} (emitted now)",
                )
            )
            problem = f"emitted source differs from golden file {relative}"
        else:
            diff = text
            problem = f"golden file {relative} does not exist; emitted source"
        pytest.fail(
            f"{problem}:\n{diff}\n"
            f"If the change is intended, update the goldens with:\n"
            f"    {UPDATE_COMMAND.format(module=module)}\n"
            "and review the diff of golden/ in your commit.",
            pytrace=False,
        )

    return check


# NOTE: [rehearsing the cuda tests]
# A GPU window is short (docs/development.md, "A GPU window"), so the cuda
# tests are rehearsed on a machine without one first: with
# $STITCH_REHEARSE_CUDA=1 (scripts/gpu_check.sh --rehearse tests) torch says a
# device is there, each cuda-marked test runs until its first real CUDA call,
# and a test stopped there by CUDA's own "no driver" error is reported as
# skipped ("rehearsed"), naming where it stopped.  Any other error (an import,
# a typo, a wrong argument, a CPU-side set-up) fails it, as it would on the GPU.
_REHEARSE = os.environ.get("STITCH_REHEARSE_CUDA") == "1"
_NO_DEVICE = re.compile(
    r"Found no NVIDIA driver|Torch not compiled with CUDA|No CUDA GPUs are available"
    r"|0 active drivers|libcuda|CUDA driver initialization failed"
    r"|cudaGetDeviceCount|no CUDA-capable device|Cannot access accelerator device"
    r"|cudaErrorInsufficientDriver|cudaErrorNoDevice"
)

if _REHEARSE:
    import torch

    torch.cuda.is_available = lambda: True  # the skipif marks read it at import


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if not (_REHEARSE and report.failed and item.get_closest_marker("cuda")):
        return
    text = str(report.longrepr)
    if not _NO_DEVICE.search(text):
        return
    frames = re.findall(r"^(\S+\.py):(\d+): ", text, flags=re.MULTILINE)
    ours = [f"{f}:{n}" for f, n in frames if "site-packages" not in f]
    where = ours[-1] if ours else "?"
    report.outcome = "skipped"
    report.longrepr = (str(item.path), item.location[1] or 0, f"rehearsed to {where}")
