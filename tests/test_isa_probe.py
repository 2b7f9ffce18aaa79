"""Inductor's vector ISA probe, its candidates side by side (NOTE: [the ISA
probe's candidates side by side] in runtime/compat/isa_probe.py): the real
dry compiles overlap, and the answer is the one Inductor reaches alone; a
later process answers from the checks that passed (NOTE: [the ISA probe's
answers remembered]), with neither a build nor a load.  What is asserted of
the overlap holds on any machine load: the tests hold checks at a barrier or
an event, never time them."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
import threading

import pytest

# Where the environment picks the ISA (ATEN_CPU_CAPABILITY), the probe's
# checks run side by side, shown by a meeting: each of the probe's checks
# waits at a barrier of two before it builds, until two have met there.
# Checks built one after the other never meet (the first gives up after
# MEET_S and breaks the barrier, and the others do not wait); checks built
# side by side always do, however loaded the machine.  Where Inductor takes
# the first valid ISA, the probe runs as a compile's warm-up does (a thread
# whose answers Inductor's list waits for) and checks up to the pick alone.
CHILD = textwrap.dedent("""
    import json, os, threading
    from torch._inductor import cpu_vec_isa
    from stitch.runtime.compat import inductor, isa_probe

    inductor.import_inductor()
    lock, checks, checked = threading.Lock(), [0], []
    meeting, met, probing = threading.Barrier(2), [], [False]
    real = cpu_vec_isa.VecISA.check_build

    def check_build(self, code):
        with lock:
            checks[0] += 1
            if str(self) not in checked:
                checked.append(str(self))
        pooled = threading.current_thread().name.startswith("stitch-isa")
        if probing[0] and pooled and not met:
            try:
                meeting.wait(timeout=MEET_S)
                met.append(True)
            except threading.BrokenBarrierError:
                pass
        return real(self, code)

    cpu_vec_isa.VecISA.check_build = check_build
    candidates = isa_probe._isa_candidates(cpu_vec_isa)
    probing[0] = True
    if isa_probe.first_is_picked():
        probe = threading.Thread(target=isa_probe.probe_cpu_isa, args=(2,))
        isa_probe.asks_wait_for(lambda: probe)
        probe.start()
        probe.join()
    else:
        isa_probe.probe_cpu_isa(2)
    probing[0] = False
    built, checked_by_probe = checks[0], list(checked)
    records = os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], isa_probe.RECORDS)
    recorded = sorted(os.listdir(records)) if os.path.isdir(records) else []
    picked = str(cpu_vec_isa.pick_vec_isa())
    valid = [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]
    # Inductor's own answer, one candidate after the other, from new instances
    # (each caches its answer): the builds are in the cache now, so only the
    # loads run again.
    alone = [type(isa)() for isa in candidates] if "STITCH_TEST_ALONE" in os.environ else []
    alone_valid = [str(isa) for isa in alone if bool(isa)]
    print(json.dumps({
        "candidates": [str(isa) for isa in candidates],
        "side_by_side": bool(met),
        "checks": built,
        "checked": checked_by_probe,
        "recorded": recorded,
        "picked": picked,
        "valid": valid,
        "alone_valid": alone_valid,
    }))
    """).replace("MEET_S", "120")


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() != "x86_64",
    reason="Inductor probes x86 ISAs one by one only on x86 Linux",
)
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core")
def test_the_probe_builds_its_candidates_side_by_side_and_picks_as_inductor(tmp_path):
    """Where the environment picks: every candidate, side by side."""
    cache = str(tmp_path / "inductor")
    result = probe(cache, "avx2")
    if len(result["candidates"]) < 2 or "avx2" not in result["candidates"]:
        pytest.skip(f"no two vector ISAs, AVX2 among them: {result}")
    # An empty cache: two of the checks met, each in a thread of its own,
    # before either built.
    assert result["side_by_side"], result
    # The same list as Inductor's, in its order, and its pick.
    assert result["valid"] == result["alone_valid"], result
    assert result["picked"] == "avx2", result
    # Each check that passed is recorded (at least one per valid ISA).
    assert len(result["recorded"]) >= len(result["valid"]), result
    # A later process with the same cache answers every check from them, and
    # reaches the same list.
    again = probe(cache, "avx2")
    assert again["checks"] == 0, again
    assert again["recorded"] == result["recorded"], again
    assert (again["valid"], again["picked"]) == (result["valid"], result["picked"])
    assert again["alone_valid"] == result["valid"], again


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() != "x86_64",
    reason="Inductor probes x86 ISAs one by one only on x86 Linux",
)
def test_the_probe_checks_up_to_the_isa_inductor_picks_and_no_further(tmp_path):
    """NOTE: [only the ISA Inductor picks is probed]: the candidates in
    order up to the first that passes, which is Inductor's own pick; the
    list pick_vec_isa reads gives that one."""
    cache = str(tmp_path / "inductor")
    result = probe(cache, None)
    if not result["alone_valid"]:
        pytest.skip(f"no vector ISA passes here: {result}")
    candidates = result["candidates"]
    # Inductor's pick, alone: the first valid ISA of its whole list.
    assert result["picked"] == result["alone_valid"][0], result
    assert result["valid"] == [result["picked"]], result
    # Checked: the candidates up to the pick, in order; none after it.
    upto = candidates[: candidates.index(result["picked"]) + 1]
    assert result["checked"] == upto, result
    assert not result["side_by_side"], result
    assert result["recorded"], result
    # A later process answers the pick from its record: nothing built.
    again = probe(cache, None, alone=False)
    assert again["checks"] == 0 and again["picked"] == result["picked"], again


def probe(cache: str, capability: str | None, alone: bool = True) -> dict:
    """The child's findings, probing with Inductor's cache in ``cache``, and
    ``$ATEN_CPU_CAPABILITY`` set to ``capability`` (None: unset); with
    ``alone``, Inductor's own list too."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    if alone:
        env["STITCH_TEST_ALONE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        env=dict(env, TORCHINDUCTOR_CACHE_DIR=cache),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# A compile begun while the probe checks (NOTE: [a compile waits for the probe
# only where it asks] in runtime/pipeline/inductor_warmup.py).  The probe's
# checks are held until the compile (this process's main thread) first asks
# for Inductor's list of valid ISAs, so the probe is alive when it asks, on
# any machine, and the ask waits for checks that are still to be built.  A
# compile that waited for the whole probe before it began would wait for
# the held checks: they go on after HOLD_S, and the probe is over by the time
# the compile asks.
COMPILE_BESIDE = textwrap.dedent("""
    import collections, functools, json, threading, time
    import torch
    from torch._inductor import cpu_vec_isa
    from stitch.runtime.compat import isa_probe
    from stitch.runtime.pipeline import inductor_warmup

    real = cpu_vec_isa.VecISA.check_build
    built, lock = collections.Counter(), threading.Lock()
    asked, held_until = threading.Event(), time.monotonic() + HOLD_S

    def check_build(self, code):
        if threading.current_thread() is not threading.main_thread():
            asked.wait(max(0.0, held_until - time.monotonic()))
        with lock:
            built[(str(self), code)] += 1
        return real(self, code)

    cpu_vec_isa.VecISA.check_build = check_build
    inductor_warmup.start_inductor_warmup(cpu=True)
    inductor_warmup.inductor_ready()
    waiting = cpu_vec_isa.valid_vec_isa_list  # Stitch's: it waits for the probe
    probing = []  # at the compile's first ask: whether the probe was alive

    @functools.wraps(waiting)
    def valid_vec_isa_list():
        if threading.current_thread() is threading.main_thread() and not probing:
            probing.append(inductor_warmup._probe.is_alive())
            asked.set()
        return waiting()

    cpu_vec_isa.valid_vec_isa_list = valid_vec_isa_list

    def f(x):
        return torch.relu(x) * 2 + 1

    x = torch.randn(64, 64)
    out = torch.compile(f, backend="inductor")(x)
    inductor_warmup._probe.join()
    print(json.dumps({
        # Each candidate's compiler flags as its class has them: a second
        # thread in one candidate's check could leave an extension's set.
        "flags_changed": [
            str(isa) for isa in isa_probe._isa_candidates(cpu_vec_isa)
            if isa._arch_flags != type(isa)._arch_flags
        ],
        "probing": probing,
        "twice": [k[0] for k, n in built.items() if n > 1],
        "checks": sum(built.values()),
        "equal": bool(torch.equal(out, f(x))),
        "picked": str(cpu_vec_isa.pick_vec_isa()),
        "valid": [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()],
    }))
    """).replace("HOLD_S", "240")


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() != "x86_64",
    reason="Inductor probes x86 ISAs one by one only on x86 Linux",
)
@pytest.mark.extended  # 30-40 s on torch 2.11: NOTE: [CI's extended tests]
def test_a_compile_begins_beside_the_probe_and_no_check_is_built_twice(tmp_path):
    cache = str(tmp_path / "inductor")
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_BESIDE],
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"},
            "TORCHINDUCTOR_CACHE_DIR": cache,
        },
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["flags_changed"] == [], result
    # The compile ran up to its first ask for the ISA while the probe's
    # checks were held: it did not wait for the probe before it began.
    assert result["probing"] == [True], result
    # Its asks waited for the probe's checks, or made them itself: never the
    # same check twice.
    assert result["twice"] == [] and result["checks"] > 0, result
    assert result["equal"], result
    # Inductor's own pick (the first valid ISA; the first test checks the
    # list against Inductor's alone).
    assert result["picked"] == result["valid"][0], result


class _Candidate:
    """A stand-in for one of Inductor's ISA candidates: its answer, once asked."""

    def __init__(self, name: str, passes: bool) -> None:
        self.name, self.passes = name, passes

    def __bool__(self) -> bool:
        return self.passes


def _running_probe(
    monkeypatch: pytest.MonkeyPatch, order: list[_Candidate]
) -> threading.Event:
    """A probe thread that runs until the event returned is set, answering
    nothing by itself, of the candidates ``order``; Inductor's list waits
    for it from now on (``inductor_ready``, which itself does not wait)."""
    from stitch.runtime.compat import isa_probe
    from stitch.runtime.pipeline import inductor_warmup

    monkeypatch.setattr(isa_probe, "_order", order)
    monkeypatch.setattr(isa_probe, "_answers", {})
    release = threading.Event()
    probe = threading.Thread(target=release.wait, args=(60,), daemon=True)
    probe.start()
    monkeypatch.setattr(inductor_warmup, "_probe", probe)
    inductor_warmup.inductor_ready()
    return release


def _asker(cpu_vec_isa: object) -> tuple[threading.Thread, list]:
    """A compile's ask for the list (what pick_vec_isa calls), from a thread."""
    got: list = []
    asker = threading.Thread(
        target=lambda: got.append(cpu_vec_isa.valid_vec_isa_list()),  # type: ignore[attr-defined]
        daemon=True,
    )
    asker.start()
    return asker, got


@pytest.mark.parametrize("picked_by", ["first valid", "ATEN_CPU_CAPABILITY"])
def test_an_ask_waits_for_the_probes_answers_up_to_the_isa_inductor_picks(
    monkeypatch: pytest.MonkeyPatch, picked_by: str
) -> None:
    """NOTE: [a compile waits for the probe only where it asks]: while the
    probe runs, an ask gets the first candidate that passed once every one
    before it has answered; where the environment picks another ISA, it waits
    for the whole probe and reads Inductor's list."""
    from torch._inductor import cpu_vec_isa

    from stitch.runtime.compat import isa_probe
    from stitch.runtime.pipeline import inductor_warmup

    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    if picked_by == "ATEN_CPU_CAPABILITY":
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", lambda: ["Inductor's"])
    first, second, third = (
        _Candidate("first", False),
        _Candidate("second", True),
        _Candidate("third", True),
    )
    release = _running_probe(monkeypatch, [first, second, third])
    probe = inductor_warmup._probe
    try:
        asker, got = _asker(cpu_vec_isa)
        asker.join(0.5)
        assert asker.is_alive() and got == []  # nothing answered yet
        isa_probe._answer(first)  # fails: the ask waits for the next
        asker.join(0.5)
        assert asker.is_alive() and got == []
        isa_probe._answer(second)  # passes; the third is still unanswered
        asker.join(0 if picked_by == "ATEN_CPU_CAPABILITY" else 30)
        if picked_by == "first valid":
            assert got == [[second]] and probe.is_alive()
        else:
            assert asker.is_alive() and got == []  # for the whole probe
    finally:
        release.set()
    asker.join(60)
    probe.join(60)
    if picked_by == "ATEN_CPU_CAPABILITY":
        assert got == [["Inductor's"]]
    # Once the probe has ended, an ask gets the pick again (NOTE: [only the
    # ISA Inductor picks is probed]); where the environment picks, Inductor's
    # own list.
    again, got = _asker(cpu_vec_isa)
    again.join(60)
    assert got == [[second] if picked_by == "first valid" else ["Inductor's"]]


@pytest.mark.parametrize("picked_by", ["first valid", "ATEN_CPU_CAPABILITY"])
def test_the_probe_checks_the_isa_inductor_picks_first_and_alone(
    monkeypatch: pytest.MonkeyPatch, picked_by: str
) -> None:
    """NOTE: [the ISA Inductor picks is probed first], NOTE: [only the ISA
    Inductor picks is probed]: the candidates in order, one at a time, until
    one passes, and none after it.  Where the environment picks, all side by
    side."""
    from torch._inductor import cpu_vec_isa

    from stitch.runtime.compat import isa_probe

    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    if picked_by == "ATEN_CPU_CAPABILITY":
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    log: list[tuple[str, str]] = []
    meeting = threading.Barrier(2)

    class Checked(_Candidate):
        checked = False

        def __bool__(self) -> bool:  # answered once, as Inductor's candidates are
            if self.checked:
                return self.passes
            self.checked = True
            log.append((self.name, threading.current_thread().name))
            if threading.current_thread().name.startswith("stitch-isa"):
                meeting.wait(30)  # the pool's two meet: side by side
            return self.passes

    names = [("fails", False), ("picked", True), ("third", True), ("fourth", True)]
    candidates = [Checked(n, p) for n, p in names]
    monkeypatch.setattr(isa_probe, "_isa_candidates", lambda _: candidates)
    monkeypatch.setattr(cpu_vec_isa, "pick_vec_isa", lambda: None)
    monkeypatch.setattr(isa_probe, "_order", [])
    monkeypatch.setattr(isa_probe, "_answers", {})
    me = threading.current_thread().name
    isa_probe.probe_cpu_isa(width=2)
    if picked_by == "first valid":
        # In order, in the probe's own thread, up to the pick; no other.
        assert log == [("fails", me), ("picked", me)], log
        checked = candidates[:2]
    else:
        assert all(t.startswith("stitch-isa") for _, t in log), log
        assert sorted(n for n, _ in log) == sorted(n for n, _ in names)
        assert not meeting.broken
        checked = candidates
    assert isa_probe._answers == {id(c): c.passes for c in checked}


def test_an_ask_where_no_candidate_passed_waits_for_the_whole_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torch._inductor import cpu_vec_isa

    from stitch.runtime.compat import isa_probe

    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", lambda: [])
    only = _Candidate("only", False)
    release = _running_probe(monkeypatch, [only])
    try:
        isa_probe._answer(only)
        asker, got = _asker(cpu_vec_isa)
        asker.join(0.5)
        assert asker.is_alive() and got == []  # none passed: the probe's end
    finally:
        release.set()
    asker.join(60)
    assert got == [[]]


def test_a_narrow_probe_checks_one_candidate_at_a_time_until_widened() -> None:
    """NOTE: [a pre-started worker probes narrow until its first job]: a
    second check waits while the first runs, until ``wide`` is set; then it
    runs beside the first, which is still running."""
    from stitch.runtime.compat import isa_probe

    wide, hold = threading.Event(), threading.Event()
    entered = [threading.Event(), threading.Event()]
    gate = isa_probe._gate(2, wide)

    def check(i: int) -> bool:
        entered[i].set()
        assert hold.wait(60)
        return True

    threads = [threading.Thread(target=gate, args=(check, i)) for i in (0, 1)]
    for t in threads:
        t.start()
    try:
        first = 0 if entered[0].wait(30) else 1
        assert entered[first].is_set()
        # Narrow: the other check does not begin while this one runs (a gate
        # that let it through would within this settle time).
        assert not entered[1 - first].wait(0.5)
        wide.set()
        assert entered[1 - first].wait(30)  # beside the first, still held
        assert not hold.is_set()
    finally:
        hold.set()
        for t in threads:
            t.join(60)


def test_a_probe_without_an_event_or_widened_is_not_gated() -> None:
    from stitch.runtime.compat import isa_probe

    wide = threading.Event()
    wide.set()
    for gate in (isa_probe._gate(2, None), isa_probe._gate(2, wide)):
        meeting = threading.Barrier(2)
        met = []

        def check(
            _: int, meeting: threading.Barrier = meeting, met: list[bool] = met
        ) -> bool:
            meeting.wait(30)  # both inside at once, or a BrokenBarrierError
            met.append(True)
            return True

        threads = [threading.Thread(target=gate, args=(check, i)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert met == [True, True]


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() != "x86_64",
    reason="Inductor probes x86 ISAs one by one only on x86 Linux",
)
def test_a_fork_gives_each_candidate_its_flags_from_before_any_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NOTE: [a fork in the middle of a check]: a candidate forked in the
    middle of an extension's check carries the extension's flag; the forked
    worker gets back the flags it had before, and no probe thread of the
    parent's."""
    from torch._inductor import cpu_vec_isa

    from stitch.runtime.compat import inductor, isa_probe
    from stitch.runtime.pipeline import inductor_warmup

    inductor.import_isa_probe()  # records each candidate's flags
    candidates = isa_probe._isa_candidates(cpu_vec_isa)
    if not candidates:
        pytest.skip("this CPU reports no x86 vector ISA to check")
    before = [isa._arch_flags for isa in candidates]
    for isa in candidates:  # what an extension's check does before it builds
        monkeypatch.setattr(isa, "_arch_flags", isa._arch_flags + " -mavx512bf16")
    monkeypatch.setattr(inductor_warmup, "_probe", threading.Thread(target=print))
    monkeypatch.setattr(inductor_warmup, "_wide", threading.Event())
    inductor_warmup.forget_probe()  # what a forked worker calls first
    assert [isa._arch_flags for isa in candidates] == before
    assert inductor_warmup._probe is None and inductor_warmup._wide.is_set()


@pytest.mark.parametrize("ends_the_hold", ["the imports", "a job"])
def test_a_held_probe_begins_after_the_imports_or_at_a_job(
    monkeypatch: pytest.MonkeyPatch, ends_the_hold: str
) -> None:
    """NOTE: [a pre-started worker's probe waits for its imports]: after
    ``hold_probe`` the probe thread starts but checks nothing while Inductor's
    import runs; it begins when the import ends or, before that, when a job
    comes (``widen_probe``), and only then is it widened."""
    from stitch.runtime.compat import inductor, isa_probe
    from stitch.runtime.pipeline import inductor_warmup

    importing, imported, began = threading.Event(), threading.Event(), []
    probing = threading.Event()

    def import_inductor() -> None:
        importing.set()
        assert imported.wait(60)

    def probe_cpu_isa(wide: threading.Event | None = None) -> None:
        began.append(wide is not None and wide.is_set())
        probing.set()

    monkeypatch.setattr(inductor, "import_isa_probe", lambda: None)
    monkeypatch.setattr(inductor, "import_inductor", import_inductor)
    monkeypatch.setattr(isa_probe, "probe_cpu_isa", probe_cpu_isa)
    monkeypatch.setattr(inductor_warmup, "_probe", None)
    monkeypatch.setattr(inductor_warmup, "_wide", threading.Event())
    monkeypatch.setattr(inductor_warmup, "_begin", threading.Event())
    inductor_warmup.hold_probe()
    warmup = threading.Thread(
        target=inductor_warmup.start_inductor_warmup, kwargs={"cpu": True}
    )
    warmup.start()
    try:
        assert importing.wait(60)
        assert inductor_warmup._probe is not None  # started, and held
        assert not probing.wait(0.5)  # a probe let through would begin in this time
        if ends_the_hold == "a job":
            inductor_warmup.widen_probe()
            assert probing.wait(60) and not imported.is_set()
            assert began == [True]  # side by side from the job on
        else:
            imported.set()
            assert probing.wait(60)
            assert began == [False]  # one at a time until a job comes
    finally:
        imported.set()
        warmup.join(60)
        inductor_warmup._probe.join(60)


# A cold forked tier (NOTE: [a forked tier probes as its build begins] in
# runtime/pipeline/tiered/forked_workers.py): every ISA check, with the process and
# thread that asked it, each dry compile of one, and the worker's fork, in a
# log that the forked worker appends to as well.
FORKED_TIER = textwrap.dedent("""
    import json, os, threading, time
    import torch
    from torch._inductor import cpp_builder, cpu_vec_isa
    from stitch.runtime import CompilationConfig, StitchBackend, wait_compiled
    from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs

    state = threading.local()

    def say(**event):
        event.update(pid=os.getpid(), t=time.monotonic(),
                     thread=threading.current_thread().name)
        with open(os.environ["STITCH_TEST_LOG"], "a") as f:
            f.write(json.dumps(event) + "\\n")

    real_check, real_build = cpu_vec_isa.VecISA.check_build, cpp_builder.CppBuilder.build

    def check_build(self, code):
        say(what="check", isa=str(self))
        state.checking = True
        try:
            return real_check(self, code)
        finally:
            state.checking = False

    def build(self, *args, **kwargs):
        if getattr(state, "checking", False):
            say(what="build", target=self.get_target_file_path())
        return real_build(self, *args, **kwargs)

    cpu_vec_isa.VecISA.check_build = check_build
    cpp_builder.CppBuilder.build = build
    os.register_at_fork(after_in_child=lambda: say(what="forked"))

    cfg = LlamaConfig(num_layers=2)
    model = build_llama(cfg)
    config = CompilationConfig(max_num_batched_tokens=cfg.max_seqs, tiered_start=True)
    backend = StitchBackend(config)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    equal = []
    for _ in range(2):  # served at once, then by the compiled pieces
        with torch.no_grad():
            ids, pos = llama_inputs(cfg, 5)
            model.reset_kv_caches()
            expected = model(ids, pos)
            model.reset_kv_caches()
            out = compiled(ids, pos)
        equal.append(bool(torch.allclose(out, expected, rtol=1e-4, atol=1e-4)))
        wait_compiled()
    tiers = [c.tier for c in backend.compiled]
    print(json.dumps({
        "equal": equal,
        "settled": [t is not None and t.settled for t in tiers],
        "picked": str(cpu_vec_isa.pick_vec_isa()),
        "pid": os.getpid(),
    }))
    """)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() != "x86_64",
    reason="Inductor probes x86 ISAs one by one only on x86 Linux",
)
@pytest.mark.extended  # a cold compile with an empty Inductor cache
def test_a_forked_tier_probes_in_a_process_of_its_own_before_its_worker_is_forked(
    tmp_path,
):
    """NOTE: [a forked tier probes as its build begins]: a process forked as
    the build begins, before the worker, makes the first ISA check, of the
    ISA picked, and no check is built twice."""
    log = tmp_path / "events.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    env.update(
        STITCH_TEST_LOG=str(log),
        STITCH_CACHE_DIR=str(tmp_path / "stitch"),
        TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
        STITCH_COMPILE_START="fork",
    )
    done = subprocess.run(
        [sys.executable, "-c", FORKED_TIER],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["equal"] == [True, True] and result["settled"] == [True], result
    events = [json.loads(line) for line in log.read_text().splitlines()]
    forks = [e for e in events if e["what"] == "forked"]
    # Two forks: the probe's as the build began, then the worker's (without
    # the change the worker was the only one, and made every check).  The
    # probe process made the first check, and checked the ISA picked.
    assert len(forks) == 2, events
    probe = forks[0]["pid"]
    checks = [e for e in events if e["what"] == "check"]
    assert checks[0]["pid"] == probe != result["pid"], events
    assert any(e["pid"] == probe and e["isa"] == result["picked"] for e in checks)
    # No dry compile is built twice, whichever process asks for it.
    targets = [e["target"] for e in events if e["what"] == "build"]
    assert targets and len(targets) == len(set(targets)), events
