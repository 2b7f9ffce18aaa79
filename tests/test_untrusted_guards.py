"""Nothing in a recorded guard is evaluated, nor computed past the codec's bounds.

Issue 75.  A guard is read from text this process did not write: a compile
worker's report (``Tier.landed``), a cache entry's index (``entry.py``) and a
fleet store's entry installed into the cache (``Tier.land_installed``).  Each
path is fed texts that would run code if they were evaluated (they create a
marker file) and guards whose numbers sympy would compute forever (NOTE: [a
recorded guard is bounded before anything is computed] in
runtime/compat/guard_bounds.py).  Each must be refused with a message naming
the guard, and the process goes on: the piece stays uncompiled, or the entry
is passed over and the call compiles.

Each case runs in a forked child that must answer within seconds: a guard
computed past the bounds never returns, and its C loop holds the GIL, so no
thread or signal in this process could stop it.  The child's memory is capped,
so such a computation fails there rather than filling the machine.
"""

from __future__ import annotations

import logging
import multiprocessing
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
import torch
import torch.fx as fx
from torch._dynamo.source import ConstantSource
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from stitch.runtime import CompilationConfig
from stitch.runtime.compat.guard_codec import GuardCodecError
from stitch.runtime.compat.shapes import check_guards, install_guard
from stitch.runtime.pipeline.piecewise import PiecewiseBackend, RangeWarnings
from stitch.runtime.pipeline.tiered.size_guards import refused_guard, size_predicate
from stitch.runtime.pipeline.tiered.tier import Tier
from stitch.runtime.store import codec
from stitch.runtime.store.index import (
    INDEX_FILE,
    EntryIdentity,
    EntryRecord,
    Index,
    PieceRecord,
)
from stitch.runtime.targets import Target

from backend_support import (
    INDUCTOR_TOL,
    TINY,
    compile_model,
    eager_and_compiled,
    model_for,
)

ANSWER_S = 20.0  # a refusal takes milliseconds; a computed guard never ends
COMPILE_S = 240.0  # a fresh process's imports and one eager compile, on a busy machine
MEMORY_HEADROOM = 4 << 30
BIG = 10**15


def promptly(
    fn: Callable[..., Any], *args: Any, start: str = "fork", answer_s: float = ANSWER_S
) -> Any:
    """``fn(*args)`` run in a child process; fails unless it returns within
    ``answer_s``.  A forked child shares what this process has built; one
    that compiles is spawned (a fork of a process whose earlier tests left
    threads running can deadlock), and ``fn`` is then a module's function."""
    context = multiprocessing.get_context(start)
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_answer, args=(send, fn, args), daemon=True)
    process.start()
    try:
        if not receive.poll(answer_s):
            pytest.fail(f"no answer within {answer_s} s: a guard was computed")
        how, value = receive.recv()
    finally:
        process.kill()
        process.join()
    assert how == "returned", value
    return value


def _answer(send: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    # NOTE: a huge number allocates as it grows; cap the child, not the machine.
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmSize"))
    limit = kib * 1024 + MEMORY_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    try:
        send.send(("returned", fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        send.send(("raised", f"{type(exc).__name__}: {exc}"))


class Messages(logging.Handler):
    """What the ``stitch`` logger says, from INFO up (an entry of old text
    guards is passed over with an INFO line; a refused guard warns)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")

    def __enter__(self) -> list[str]:
        logger = logging.getLogger("stitch")
        self.level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self.lines

    def __exit__(self, *exc: Any) -> None:
        logger = logging.getLogger("stitch")
        logger.removeHandler(self)
        logger.setLevel(self.level)


def _chars(text: str) -> str:
    """``text`` as Python that makes it without a quote (``chr(47)+...``)."""
    return "+".join(f"chr({ord(c)})" for c in text)


def evaluating(marker: Path, size: str) -> list[str]:
    """Texts without a quote (read as old ``str()`` text) that create
    ``marker`` when evaluated, as sympy's parser would."""
    path = _chars(str(marker))
    return [
        f"Eq(open({path}, chr(119)), {size})",
        f"__import__({_chars('os')}).mkdir({path})",
    ]


def huge(size: str) -> list[str]:
    """Guards whose numbers sympy computes as it reads them (or as it
    evaluates them at a size) and never finishes."""
    s = f"Symbol({size!r}, integer=True, positive=True)"
    return [
        f"StrictLessThan({s}, Pow(Integer(3), Integer({BIG})))",
        f"StrictLessThan(torch.PowByNatural({s}, Integer({BIG})), Integer(5))",
        f"StrictLessThan({s}, torch.LShift(Integer(1), Integer({BIG})))",
        f"StrictLessThan({s}, Add(Rational(1, 3), Pow(Integer(7), Integer(-{BIG}))))",
        polynomial(size),
        f"{size} < 1<<(1<<40)",
    ]


def polynomial(size: str) -> str:
    """``((s+1)**2 + 1)**2 ...`` nested twelve times: sympy's assumptions find
    the real roots of its derivative as it is built, for minutes."""
    inner = f"Add(Symbol({size!r}, integer=True, positive=True), Integer(1))"
    for _ in range(12):
        inner = f"Add(Pow({inner}, Integer(2)), Integer(1))"
    return f"StrictLessThan({inner}, Integer(5))"


def tower(size: str) -> str:
    """Within the bounds as read, ``s**(s**(s**s))``; at a size above 2 it is not."""
    s = f"Symbol({size!r}, integer=True, positive=True)"
    return f"StrictLessThan(Pow({s}, Pow({s}, Pow({s}, {s}))), Integer(5))"


def payloads(marker: Path, size: str) -> list[str]:
    return evaluating(marker, size) + huge(size)


def named(text: str, lines: Any) -> bool:
    """Whether a message names the guard (its start: a message shortens it)."""
    return any(text[:40] in line for line in lines)


# -- a worker's report: size_predicate and Tier.landed -------------------------


def graph_with_size() -> tuple[fx.GraphModule, str]:
    env = ShapeEnv()
    size = env.create_symintnode(env.create_unbacked_symint().node.expr, hint=None)
    graph = fx.Graph()
    x = graph.placeholder("x")
    n = graph.placeholder("n")
    n.meta["example_value"] = size
    graph.output((x, n))
    return fx.GraphModule({}, graph), size.node.expr.name


def tier_over(root: Path) -> Tier:
    """A tier of one piece (``submod_0``, its size the second argument) whose
    cache entry is the folder ``root/entry``."""
    graph, _ = graph_with_size()
    backend = PiecewiseBackend("submod_0", 1, {Target("general"): graph.forward})
    cache = SimpleNamespace(root=str(root), directory=str(root / "entry"))
    return Tier(
        CompilationConfig(),
        cache,  # type: ignore[arg-type]
        source=None,  # type: ignore[arg-type]
        backends={"submod_0": backend},
        graphs={"submod_0": graph},
        warnings=RangeWarnings(),
        started=time.perf_counter(),
        label="test",
    )


RECORD = PieceRecord(
    module_path="layers.0",
    size_index=1,
    entries=(EntryRecord("general", "a" * 16, True),),
    layouts=(),
)


@pytest.mark.timeout(120)
def test_a_workers_guard_is_read_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "evaluated"
    _, size = graph_with_size()  # the same unbacked name in every ShapeEnv

    def read(text: str) -> tuple[bool, list[str]]:
        graph, _ = graph_with_size()
        with Messages() as lines:
            return size_predicate(graph, 1, [text]) is None, lines

    for text in payloads(marker, size):
        refused, lines = promptly(lambda text=text: read(text))
        assert refused, text
        assert not marker.exists(), text
        assert not lines, lines  # the tier says why, once (below)
        assert named(text, [refused_guard([text])]), text


@pytest.mark.timeout(60)
def test_a_guard_is_evaluated_at_a_size_within_the_bounds() -> None:
    """A guard that reads within the bounds but would compute past them at a
    size holds nowhere: the uncompiled piece serves that size."""
    _, size = graph_with_size()

    def at(sizes: tuple[int, ...]) -> list[bool]:
        graph, _ = graph_with_size()
        holds = size_predicate(graph, 1, [tower(size)])
        assert holds is not None
        return [holds(n) for n in sizes]

    assert promptly(lambda: at((1, 2, 3, 8, 2**40))) == [True] + [False] * 4


@pytest.mark.timeout(120)
def test_a_worker_reporting_a_refused_guard_leaves_its_piece_uncompiled(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "evaluated"
    _, size = graph_with_size()

    def land(text: str) -> tuple[dict[str, str], list[str]]:
        tier = tier_over(tmp_path)
        with Messages() as lines:
            tier.landed("submod_0", RECORD, [text])
        return tier.failed, lines

    for text in payloads(marker, size):
        failed, lines = promptly(lambda text=text: land(text))
        assert not marker.exists(), text
        assert list(failed) == ["submod_0"], text
        assert text[:40] in failed["submod_0"], failed
        said = [line for line in lines if "stays uncompiled" in line]
        assert len(said) == 1 and "is refused" in said[0], lines
        assert named(text, said), lines


# -- a fleet store's entry, installed: Tier.land_installed ---------------------


@pytest.mark.timeout(120)
def test_a_fleet_entrys_refused_guard_leaves_every_piece_uncompiled(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "evaluated"
    _, size = graph_with_size()
    identity = EntryIdentity(
        "0.1.0", str(torch.__version__), "c" * 64, "g" * 64, "inductor"
    )
    (tmp_path / "entry").mkdir(mode=0o700)

    def install(text: str) -> tuple[dict[str, str], list[str]]:
        index = Index(identity, None, {"submod_0": RECORD}, guards=(text,))
        (tmp_path / "entry" / INDEX_FILE).write_text(index.render())
        tier = tier_over(tmp_path)
        with Messages() as lines:
            tier.land_installed()
        return tier.failed, lines

    for text in payloads(marker, size):
        failed, lines = promptly(lambda text=text: install(text))
        assert not marker.exists(), text
        assert list(failed) == ["submod_0"] and text[:40] in failed["submod_0"]
        assert named(text, [line for line in lines if "is refused" in line]), lines


# -- a cache entry's index: check_guards, install_guard, and a real start ------


@pytest.mark.timeout(120)
def test_a_recorded_guard_is_refused_before_it_is_checked(tmp_path: Path) -> None:
    marker = tmp_path / "evaluated"

    def check(text: str, install: bool) -> list[str]:
        env = ShapeEnv()
        env.create_symbol(9, source=ConstantSource("n"))  # the name below
        found = []
        try:
            check_guards(env, [text])
        except GuardCodecError as exc:
            found.append(str(exc))
        try:
            if install:  # only a guard that checked is installed (entry.py)
                install_guard(env, text)
        except GuardCodecError as exc:
            found.append(str(exc))
        return found

    size = str(ShapeEnv().create_symbol(9, source=ConstantSource("n")))
    for text in payloads(marker, size):
        found = promptly(lambda text=text: check(text, install=True))
        assert not marker.exists(), text
        assert len(found) == 2 and named(text, found), (text, found)
    # Read, then refused where it is evaluated at the call's size (9).
    (found,) = promptly(lambda: check(tower(size), install=False))
    assert f"does not evaluate at {size}=9" in found and "past 4096" in found


def _start(root: Path) -> dict[str, Any]:
    """Compile the tiny model with the eager backend and a cache at ``root``
    (in a spawned child), checked against eager."""
    torch._dynamo.reset()  # a child starts more than one (_start_again_and_over)
    model = model_for(TINY)
    backend, fn = compile_model(
        model, CompilationConfig(cache_dir=str(root), backend="eager")
    )
    with Messages() as lines:
        ref, out = eager_and_compiled(model, fn, TINY, 8)
    torch.testing.assert_close(out, ref, **INDUCTOR_TOL)
    (compiled,) = backend.compiled
    sizes = {
        str(d.node.expr)
        for node in compiled.split_gm.graph.find_nodes(op="placeholder")
        if isinstance(value := node.meta.get("example_value"), torch.Tensor)
        for d in value.shape
        if isinstance(d, torch.SymInt)
    }
    return {
        "warm": compiled.warm,
        "entry": compiled.cache_dir,
        "lines": lines,
        "sizes": sorted(sizes),
    }


KINDS = ("evaluating", "huge power", "huge shift", "evaluated huge")


def _guard(kind: str, marker: Path, size: str) -> str:
    return {
        "evaluating": evaluating(marker, size)[1],
        "huge power": huge(size)[0],
        "huge shift": huge(size)[-1],
        "evaluated huge": tower(size),
    }[kind]


def _start_again_and_over(
    root: Path, entry: Path, cases: dict[str, tuple[Path, str]]
) -> dict[str, Any]:
    """In one spawned child: a second start of ``root``, then for each kind a
    start of a copy of ``root`` whose entry's index holds that kind's guard
    (``cases``: the kind's folder and guard).  One child rather than one
    each: every start here begins with a Dynamo reset and reads only its own
    cache folder, and each fresh interpreter's imports took 7 to 10 s of the
    suite."""
    again = _start(root)
    over = {}
    for kind, (folder, text) in cases.items():
        cache = folder / "cache"
        shutil.copytree(root, cache)
        index_path = cache / entry / INDEX_FILE
        index = codec.read(Index, str(index_path))
        index_path.write_text(msgspec.structs.replace(index, guards=(text,)).render())
        over[kind] = _start(cache)
    return {"again": again, "over": over}


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A cache whose one entry (no guard) a second start uses; then, for each
    kind of refused guard, a start of a copy of it whose entry holds that
    guard.  (The eager backend saves no artifact: no start of it is warm.)"""
    root = tmp_path_factory.mktemp("populated")
    first = promptly(_start, root, start="spawn", answer_s=COMPILE_S)
    (size,) = first["sizes"]  # guards over it are checked, the others passed over
    entry = Path(first["entry"]).relative_to(root)
    work = tmp_path_factory.mktemp("passed-over")
    cases = {
        kind: (work / kind, _guard(kind, work / kind / "evaluated", size))
        for kind in KINDS
    }
    later = promptly(
        _start_again_and_over, root, entry, cases, start="spawn", answer_s=COMPILE_S
    )
    again = later["again"]
    assert again["entry"] == first["entry"], again
    assert not [x for x in again["lines"] if "warm load failed" in x], again
    return {"entry": entry, "size": size, "cases": cases, **later}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", KINDS)
def test_a_cache_entry_with_a_refused_guard_is_passed_over_and_compiled(
    kind: str, populated: dict[str, Any]
) -> None:
    folder, text = populated["cases"][kind]
    size = populated["size"]
    entry = folder / "cache" / populated["entry"]
    started = populated["over"][kind]
    assert not (folder / "evaluated").exists()
    assert started["entry"] != str(entry), started  # the chain's next, compiled
    (line,) = [x for x in started["lines"] if "a warm load failed" in x]
    assert str(entry) in line and "GuardCodecError" in line, line
    assert text[:40] in line or f"{size}**({size}**" in line, line
    assert "compiles the next entry of its chain" in line, line
