"""NOTE: [serving first]: compile workers pause while they make the serving
process wait for a core, and take the cores back when it is idle.

The "workers" here are real processes that keep a core busy, as a compile
does (or sleep, as a compile that costs the process nothing); the serving
process is this one, with a thread that keeps a core busy, as a forward does.
Every assertion is of a state seen (a worker paused, resumed, moved) or of a
decision the controller made, never of a share of samples or of time: the
machine may be shared with anything, and the shares are measured by
bench/serving_first_shares.py."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stitch.runtime.workers import serving_first
from stitch.runtime.workers.serving_first import PERIOD_TICKS, ServingFirst
from stitch.runtime.workers.worker_cost import LIMIT, WorkerCost

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="Linux's /proc (run delay)"
)

HOG = "import os\nif os.fork() == 0:\n    pass\nwhile True:\n    pass\n"
# A worker that costs the serving process nothing: it sleeps (it says when it
# has started: an interpreter's start is a tenth of a second of CPU).
LIGHT = "import time\nprint(flush=True)\nwhile True:\n    time.sleep(0.01)\n"
# Long enough for anything the controller does to be seen on a shared machine.
WAIT_S = 30.0


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def children(pid: int) -> list[int]:
    return [
        int(c)
        for f in Path(f"/proc/{pid}/task").glob("*/children")
        for c in f.read_text().split()
    ]


def until(check: Callable[[], bool], seconds: float = WAIT_S) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def all_paused(family: list[int]) -> bool:
    return all(state(q) == "T" for q in family)


def none_paused(family: list[int]) -> bool:
    return not any(state(q) == "T" for q in family)


@pytest.fixture(autouse=True)
def serving_first_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # The users' default, as the rest of the suite runs it (NOTE: [the suite
    # runs the defaults] in conftest.py), whatever the caller's environment says.
    monkeypatch.setenv(serving_first.ENV, "1")


@pytest.fixture
def hogs():  # type: ignore[no-untyped-def]
    """Two processes (one a core), each with a child of its own, that keep a
    core busy."""
    started = [
        subprocess.Popen([sys.executable, "-c", HOG])
        for _ in range(max(2, os.cpu_count() or 2))
    ]
    assert until(lambda: all(children(p.pid) for p in started))
    yield started
    for p in started:
        for c in children(p.pid):
            os.kill(c, 9)
        p.kill()
        p.wait()


@pytest.fixture
def sleepers():  # type: ignore[no-untyped-def]
    """Two started workers that sleep, as pre-started workers wait for a compile."""
    started = [
        subprocess.Popen([sys.executable, "-c", LIGHT], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    for p in started:
        assert p.stdout is not None and p.stdout.readline()
    yield started
    for p in started:
        p.kill()
        p.wait()


class Harmful(WorkerCost):
    """Workers known to make the busy process wait, with no learning period.
    What running workers cost is measured (the tests of WorkerCost below);
    beside a neighbour a measurement can find hogs harmless for a while, and
    the tests that use this one are of what the controller does once they
    are harmful: the pauses, the resumes, the compile's share."""

    def due(self) -> bool:
        return False


@pytest.fixture
def harmful(monkeypatch: pytest.MonkeyPatch) -> None:
    # The controller makes its WorkerCost when its thread starts.
    monkeypatch.setattr(serving_first, "WorkerCost", Harmful)


# What a controller decided, in order: ("run", k) at every tick's end (the
# first k workers run, the others are paused) and, as a test has it record
# them, ("period",) at a period's end (the decision of its last tick comes
# after it), ("begin",) where a learning period begins (every worker runs
# throughout it, NOTE: [serving first]) and ("harmful", verdict) where one
# judged.
Events = list[tuple]


@pytest.fixture
def events() -> Events:
    return []


def record_verdicts(monkeypatch: pytest.MonkeyPatch, events: Events) -> None:
    """Have the controllers started from now on record their learning periods."""

    class Learned(WorkerCost):
        def begin(self) -> None:
            events.append(("begin",))
            super().begin()

        def ended(self, excess: float, seconds: float, busy: bool, low: int) -> None:
            super().ended(excess, seconds, busy, low)
            if self.unlearned == 0:  # a learning period judged
                events.append(("harmful", self.harmful))

    monkeypatch.setattr(serving_first, "WorkerCost", Learned)


class Recorded(ServingFirst):
    """A controller that records how many workers it lets run, every tick."""

    def __init__(self, events: Events) -> None:
        super().__init__()
        self.events = events

    def _run_first(self, k: int) -> None:
        self.events.append(("run", k))
        super()._run_first(k)


def busy(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))


@contextlib.contextmanager
def serving(
    workers: list[subprocess.Popen[bytes]],
    load: Callable[[threading.Event], None],
    control: ServingFirst | None = None,
) -> Iterator[tuple[ServingFirst, list[int], Callable[[], None]]]:
    """A controller of ``workers`` while a thread of this process runs
    ``load``: the controller, the workers with their children, and ``idle()``,
    which ends the load (the process idles from then on).  At the block's end
    the load ends and every worker is resumed."""
    control = control or ServingFirst()
    stop = threading.Event()
    thread = threading.Thread(target=load, args=(stop,))
    thread.start()

    def idle() -> None:
        stop.set()
        thread.join()

    try:
        for p in workers:
            control.watch(p.pid)
        yield control, [q for p in workers for q in (p.pid, *children(p.pid))], idle
    finally:
        idle()
        control.release()


def test_workers_pause_while_the_process_is_busy_and_run_when_it_is_idle(
    hogs: list[subprocess.Popen[bytes]],
    harmful: None,
) -> None:
    with serving(hogs, busy) as (control, family, idle):
        # Busy: the workers, and their children (a build pool, gcc), pause.
        assert until(lambda: control.paused)
        assert until(lambda: all_paused(family))
        # Idle: every one runs again.
        idle()
        assert until(lambda: not control.paused and none_paused(family))


def forward_then_rest(family: list[int], burst_s: float = 0.015) -> bool:
    """A short forward on this thread (``burst_s`` of CPU), then nine times as
    long idle, as a serving loop busy a tenth of the time: whether every one
    of ``family`` was seen paused during the forward and every one running
    again before the rest ended."""
    start, paused = time.thread_time(), False
    while time.thread_time() - start < burst_s:
        paused = all_paused(family) or paused  # the forward's CPU: these reads
    rest_until, resumed = time.monotonic() + 9 * burst_s, False
    while time.monotonic() < rest_until:
        resumed = resumed or none_paused(family)
        time.sleep(0.005)
    return paused and resumed


def test_workers_run_between_short_forwards(
    hogs: list[subprocess.Popen[bytes]],
    harmful: None,
) -> None:
    # Paused at a forward's start and resumed once the process is idle again,
    # before the next forward.  The controller used to see a forward only at
    # a period's end, after it had ended, and then let one worker more run
    # every UP periods (a tenth of a second each): every worker running again
    # took longer than the rest between two forwards, and they stood paused
    # 70 to 80% of the time for a process busy 10% of it.
    # Two forwards in a row: the controller's first period (a probe, every
    # worker paused throughout) can begin in a forward and end in the rest
    # after it, which looks the same to a single forward.
    with serving(hogs, lambda stop: stop.wait()) as (_, family, _):
        in_a_row = [0]

        def twice_in_a_row() -> bool:
            in_a_row[0] = in_a_row[0] + 1 if forward_then_rest(family) else 0
            return in_a_row[0] >= 2

        assert until(twice_in_a_row), "never paused and resumed twice in a row"


def test_workers_cost_a_busy_process_at_most_the_cpu_they_used(
    hogs: list[subprocess.Popen[bytes]], sleepers: list[subprocess.Popen[bytes]]
) -> None:
    # WorkerCost's verdict on real processes, from its own readings of their
    # CPU time over a learning period: the delay above others' that the busy
    # process saw then (``excess``, core-seconds a second) is the workers'
    # doing only up to the CPU they used.  A neighbour computing in bursts
    # (another pytest worker on CI's 2 cores) moved others' delay by a third
    # of a core from one period to the next, and sleeping workers were judged
    # harmful on that reading alone.
    def judged(
        workers: list[subprocess.Popen[bytes]],
        excess: float,
        busy: bool = True,
        low: int | None = None,
    ) -> bool:
        """The verdict of a learning period of 10 periods' length."""
        cost = WorkerCost(lambda: [p.pid for p in workers])
        cost.begin()
        start = time.monotonic()
        time.sleep(10 * serving_first.PERIOD_S)
        ran = len(workers) if low is None else low
        cost.ended(excess, time.monotonic() - start, busy, ran)
        return cost.harmful

    # A core's delay (ten times LIMIT), a neighbour's: the sleepers used
    # next to no CPU.
    assert not judged(sleepers, excess=10 * LIMIT)
    # The same delay beside workers that compute: theirs.
    assert judged(hogs, excess=10 * LIMIT)
    # Workers that compute but leave the process every core it needs (more
    # cores than both need): no delay, no harm.
    assert not judged(hogs, excess=0.0)
    # Only a learning period of a busy process in which every worker ran
    # judges: until then the workers are taken to be harmful.
    assert judged(sleepers, excess=10 * LIMIT, busy=False)
    assert judged(sleepers, excess=10 * LIMIT, low=0)


# The delay (core-seconds a second) a neighbour adds to the serving process's.
NEIGHBOUR_CORES = 0.5


@pytest.mark.parametrize(
    "neighbour", [False, True], ids=["alone", "beside_a_neighbour"]
)
def test_workers_that_cost_a_busy_process_nothing_are_not_paused(
    neighbour: bool,
    sleepers: list[subprocess.Popen[bytes]],
    events: Events,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Forwards back to back (a GPU's serving loop) beside workers that leave
    # it every core it needs (on a 16-core machine; here, workers that
    # sleep): what they cost is measured while the process is busy, and they
    # are not paused for it.  Before, a process busy all the time never
    # measured it, and kept every worker paused but one a fifth of the time
    # (an H200's tiered start: the last swap at 3.04x the cold compile).
    # Beside a neighbour computing in bursts (another pytest worker on CI's 2
    # cores) the delay others cause, measured seconds before, moved by a
    # third of a core, and the workers were judged harmful on that alone:
    # paused 28 samples of 40.  A real neighbour's bursts come when they
    # will; this one's delay, as the controller reads it, begins once the
    # workers have been judged, so every reading after is stale by half a
    # core, none of it the workers' doing.
    # No probe (every PROBE periods, every worker paused for one to measure
    # others' delay): each pause here would be for harm.
    monkeypatch.setattr(serving_first, "PROBE", 10**9)
    record_verdicts(monkeypatch, events)
    since: list[float] = []
    run_delay = serving_first.run_delay

    def with_a_neighbour(skip: int = 0) -> float:
        if neighbour and not since and ("harmful", False) in events:
            since.append(time.monotonic())
        added = NEIGHBOUR_CORES * (time.monotonic() - since[0]) if since else 0.0
        return run_delay(skip) + added

    monkeypatch.setattr(serving_first, "run_delay", with_a_neighbour)

    def verdicts() -> Events:
        return [e for e in events if e[0] == "harmful"]

    with serving(sleepers, busy, Recorded(events)) as (_, family, _):
        # Learned while the process is busy, and again every LEARN periods:
        # four learning periods, three seconds or more.
        assert until(lambda: len(verdicts()) >= 4), events[-50:]
        assert until(lambda: none_paused(family))
    first = events.index(verdicts()[0])
    assert verdicts() == [("harmful", False)] * len(verdicts()), verdicts()
    # From the first verdict on, every worker ran in every tick: none paused
    # at a forward's start, nor for a neighbour's delay.
    decided = [e[1] for e in events[first:] if e[0] == "run"]
    assert decided and set(decided) == {len(sleepers)}, Counter(decided)


def periods(events: Events) -> list[list[int]]:
    """For every whole period recorded, how many workers ran: as the last
    period ended (its last tick's decision), then in each of its ticks but
    the last (whose decision the controller counts before it changes it, at
    the period's end)."""
    whole: list[list[int]] = []
    current: list[int] | None = None
    for event in list(events):
        if event[0] == "period":
            if current is not None:
                whole.append(current)
            current = []
        elif event[0] == "run" and current is not None:
            current.append(event[1])
    return whole


def the_share_came(events: Events, n: int) -> bool:
    """Whether HOLD + 1 periods in a row have passed in which the ``n``
    workers never all ran (which restarts the count: the process was idle)
    and ran less than half the time (in at most PERIOD_TICKS / 2 - 2 of the
    ticks seen: less than half whatever the tick not seen); AssertionError
    unless a worker ran throughout the next."""
    low = 0
    for ran in periods(events):
        if low > serving_first.HOLD:
            assert all(k > 0 for k in ran), f"the share's period ran {ran}"
            return True
        seen = sum(k > 0 for k in ran[1:])
        low = low + 1 if n not in ran and 2 * (seen + 1) < PERIOD_TICKS else 0
    return False


def test_however_busy_the_process_a_worker_runs_a_period_after_hold_periods(
    hogs: list[subprocess.Popen[bytes]],
    events: Events,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The compile's share: after HOLD periods with the workers paused, one
    # runs for a period, forward or not.  The count of such periods
    # restarted whenever the controller let one more worker run at a
    # period's end, which a forward's start undid a tick later: a worker ran
    # 5% of the time beside a forward on two threads, and a tiered start
    # under forwards back to back never swapped on 2 cores.  Counted in the
    # controller's periods, not in seconds (bench/serving_first_shares.py
    # measures the share of the time).
    class Periods(Harmful):
        def ended(self, excess: float, seconds: float, busy: bool, low: int) -> None:
            events.append(("period",))
            super().ended(excess, seconds, busy, low)

    monkeypatch.setattr(serving_first, "WorkerCost", Periods)
    # No probe (every PROBE periods, every worker paused for one, the share's
    # too): the share is never put off.
    monkeypatch.setattr(serving_first, "PROBE", 10**9)
    with serving(hogs, busy, Recorded(events)):
        assert until(lambda: the_share_came(events, len(hogs))), periods(events)[-9:]


def test_a_worker_let_go_or_a_process_that_exits_resumes_them_first(
    hogs: list[subprocess.Popen[bytes]],
    harmful: None,
) -> None:
    control = ServingFirst()
    first, *rest = hogs
    for p in hogs:
        control.watch(p.pid)
    stop = threading.Event()
    serving = threading.Thread(target=busy, args=(stop,))
    serving.start()
    try:
        assert until(lambda: control.paused and state(first.pid) == "T")
        control.forget(first.pid)  # its pool let it go
        assert state(first.pid) != "T"
        assert until(lambda: control.paused and state(rest[0].pid) == "T")
        control.release()  # the process exits and waits for its workers
        assert not control.paused
        assert all(state(p.pid) != "T" for p in hogs)
        time.sleep(0.5)  # and none is paused again
        assert all(state(p.pid) != "T" for p in hogs)
    finally:
        stop.set()
        serving.join()


def test_the_controller_stops_when_its_workers_are_gone(
    hogs: list[subprocess.Popen[bytes]],
) -> None:
    control = ServingFirst()
    control.watch(hogs[0].pid)
    thread = control._thread
    assert thread is not None and thread.is_alive()
    for c in children(hogs[0].pid):
        os.kill(c, 9)
    hogs[0].kill()
    hogs[0].wait()
    thread.join(10)
    assert not thread.is_alive()


def test_it_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch, hogs: list[subprocess.Popen[bytes]]
) -> None:
    monkeypatch.setenv(serving_first.ENV, "0")
    control = ServingFirst()
    control.watch(hogs[0].pid)
    assert control._thread is None


def test_this_process_is_never_paused() -> None:
    # A test's worker may compile in this very process (its pid is the
    # worker's): pausing it would stop the controller too, for ever.
    control = ServingFirst()
    control.watch(os.getpid())
    control.watch(0)
    assert control._thread is None and not control._order


# The serving process of a vLLM CPU engine on 2 cores: every thread pinned to
# one core; its compile worker (a hog with a child: its build pool) may run on
# every core.  A thread of the pinned process computes (a forward), then rests.
# It prints what it saw: whether the worker and its child were ever paused,
# whether they were seen on the spare cores only while the forward computed,
# on every core once it rested, and after the controller's release.
_PINNED = """
import json, os, subprocess, sys, threading, time
from stitch.runtime.workers import worker_cpus
from stitch.runtime.workers.serving_first import ServingFirst

every = os.sched_getaffinity(0)
core = min(every)
spare = sorted(every - {core})
for tid in os.listdir("/proc/self/task"):
    os.sched_setaffinity(int(tid), {core})
worker_cpus.allow(every)  # as vLLM's backend adds its engine's cores
hog = subprocess.Popen([sys.executable, "-c", sys.argv[1]],
                       preexec_fn=lambda: os.sched_setaffinity(0, every))
family = []
while len(family) < 2:
    family = [hog.pid] + [int(c) for f in os.scandir(f"/proc/{hog.pid}/task")
                          for c in open(f"{f.path}/children").read().split()]
    time.sleep(0.02)
control = ServingFirst()
control.watch(hog.pid)
stopped = False

def on(cpus):
    # Whether every one of the family is on cpus (never paused, on the way).
    global stopped
    stat = [open(f"/proc/{q}/stat").read().rpartition(")")[2].split()[0] for q in family]
    stopped = stopped or "T" in stat
    return all(sorted(os.sched_getaffinity(q)) == cpus for q in family)

def until(cpus, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if on(cpus):
            return True
        time.sleep(0.03)
    return False

stop = threading.Event()
def forward():
    while not stop.is_set():
        sum(range(1000))
thread = threading.Thread(target=forward)
thread.start()
narrowed = until(spare)
for _ in range(10):  # the forward goes on: still never paused
    on(spare)
    time.sleep(0.03)
stop.set()
thread.join()
widened = until(sorted(every))
control.release()
released = on(sorted(every))
for q in family[::-1]:
    os.kill(q, 9)
print(json.dumps({"narrowed": narrowed, "widened": widened, "released": released,
                  "stopped": stopped}))
"""


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="needs two cores to leave one spare"
)
def test_workers_move_to_the_cores_pinned_serving_threads_leave_and_never_pause() -> (
    None
):
    """NOTE: [workers on the serving threads' spare cores] (worker_cpus.py)."""
    import json

    done = subprocess.run(
        [sys.executable, "-c", _PINNED, HOG],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, **{serving_first.ENV: "1"}),
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    # While the forward computes, the worker and its child are moved to the
    # spare cores; once it rests, and once released, back on every core.
    assert seen["narrowed"] and seen["widened"] and seen["released"], seen
    # Never paused: a worker on a spare core takes no core from the forward
    # (it stood paused through vLLM's engine start, and at every request).
    assert not seen["stopped"], seen


def test_a_paused_worker_that_has_exited_and_been_reaped_is_no_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker (or the ISA probe's process, or a gcc under it) may exit and
    be reaped between the controller's look at who is alive and its pause,
    and its task folder can vanish while its children are listed: the pause
    signals what is left, and the controller's thread goes on (that listing
    raised FileNotFoundError, and ended the thread, twice in CI run 37)."""
    from stitch.runtime.workers import proc_family

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    gone = int(done.stdout)  # exited and reaped

    class Vanishing(type(Path())):  # type: ignore[misc]
        # The folder was there when the listing began, and is gone at its read.
        def glob(self, pattern: str) -> Iterator[Path]:
            raise FileNotFoundError(2, "No such file or directory", str(self))

    monkeypatch.setattr(proc_family, "Path", Vanishing)
    assert proc_family.family(gone) == [gone]
    control = ServingFirst()
    control._pause(gone)
    control._go_on(gone)
