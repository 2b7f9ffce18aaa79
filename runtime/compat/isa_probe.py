"""Inductor's vector ISA probe: only the ISA Inductor picks, checked first
(every candidate side by side where the environment picks), each answer
there for a compile's ask as soon as it is known, and the answers remembered
between processes (NOTE: [the ISA probe's candidates side by side], NOTE: [the
ISA Inductor picks is probed first], NOTE: [only the ISA Inductor picks is
probed], NOTE: [the ISA probe's answers remembered])."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import torch

# The folder, in Inductor's cache folder, of the checks that passed.
RECORDS = "stitch_isa"


def probe_cpu_isa(width: int = 0, wide: threading.Event | None = None) -> None:
    """Probe the CPU's vector ISA as Inductor does, its candidates ``width`` at
    a time (0: as many as this process has cores); one at a time until
    ``wide`` is set, where it is given (NOTE: [a pre-started worker probes
    narrow until its first job] in pipeline/tiered/spawned_workers.py).

    NOTE: [the ISA probe's candidates side by side]
    Inductor tries each vector ISA the CPU reports, one after the other: a
    C++ dry compile of the ISA's check (``at::vec``'s headers), a smaller one
    for each extension it adds (AVX-512's bf16 and VNNI), and a fresh process
    that loads each result.  With an empty Inductor cache (a new container, a
    new ``$TORCHINDUCTOR_CACHE_DIR``) that was six compiles in a row on an
    AVX-512 machine, 8 to 9 s of a 3-layer example's 18.6 s cold compile on
    2 cores.  The candidates are independent objects, each answering
    ``bool()`` once (functools.cache on the instance) and changing only its
    own flags while it checks, so they are asked here from threads of their
    own (each compile and load is a subprocess, so the threads wait without
    the interpreter's lock), and ``pick_vec_isa`` then reads their cached
    answers: the same list, in Inductor's order, so the same ISA.  Where
    that list is not Inductor's to make this way (not x86, a configured
    ``vec_isa_ok``, an internal build) or a release lacks these names,
    Inductor probes alone, as before.

    NOTE: [the ISA Inductor picks is probed first]
    A compile waits only for the candidate ``pick_vec_isa`` takes (NOTE: [a
    compile waits for the probe only where it asks], pipeline/inductor_warmup.py),
    the first that passes in Inductor's order.  Checked side by side with the
    others, that one was the last to answer on this 2-core AVX-512 machine
    (its base check and VNNI's, beside AVX-512's and AVX2's), so the compile
    waited for the whole probe all the same.  So the probe checks the
    candidates one at a time, in order, until one passes (where the pick is
    the first valid: ``first_is_picked``), alone on its core: alone on an
    idle 2-core machine with an empty Inductor cache, the picked one (AVX-512
    with VNNI) answered in about 2.5 s, where the three side by side took 4.3
    to 4.7 s.  Where the environment picks the ISA, all of them are checked
    side by side.

    NOTE: [only the ISA Inductor picks is probed]
    The candidates after the pick were then checked side by side, beside the
    compile that already had its answer: two more dry compiles and loads, on
    2 cores, among the first piece's C++ builds.  Nothing read them.
    ``pick_vec_isa`` is the only reader of Inductor's list (torch 2.11 to
    2.15), and where the environment does not pick, it reads the list's first
    entry only; Stitch's list, the one it reads (NOTE: [a compile waits for
    the probe only where it asks]), gives that entry alone, during the probe
    and after it.  So the probe ends at the pick.  The example llama at 32
    layers, empty caches, 2 cores (``bench/tier_timeline.py``, three rounds
    each way, alternating): a cold call's probe ended 3.5 to 4.4 s after the
    backend call rather than 8.1 to 9.4 s, and its last compile came at 9.3
    to 10.7 s against 10.9 to 12.9 s (docs/performance.md, "Only the ISA
    Inductor picks").  The others are checked only where something reads
    Inductor's whole list: a pick the environment makes (``ATEN_CPU_CAPABILITY``,
    ``cpp.simdlen``), at its ask, or a process in which no probe ran, as
    Inductor always did.
    """
    from torch._inductor import cpu_vec_isa

    candidates = _isa_candidates(cpu_vec_isa)  # [] but on x86 Linux
    with _answered:
        _order[:] = candidates  # what a compile's ask waits on (first_valid)
    if first_is_picked():
        # One at a time, in order, up to the first that passes: the pick, all
        # that pick_vec_isa reads (NOTE: [only the ISA Inductor picks is
        # probed]).  None passed: every one is answered.
        for isa in candidates:
            if _answer(isa):
                return
        return
    if candidates:  # sched_getaffinity is Linux's
        width = min(len(candidates), width or len(os.sched_getaffinity(0)))
    if len(candidates) > 1 and width > 1:
        from concurrent.futures import ThreadPoolExecutor

        gate = _gate(width, wide)
        with ThreadPoolExecutor(width, thread_name_prefix="stitch-isa") as pool:
            list(pool.map(lambda isa: gate(_answer, isa), candidates))
    for isa in candidates:  # one at a time, in order (answered ones at once)
        _answer(isa)
    cpu_vec_isa.pick_vec_isa()


def _gate(width: int, wide: threading.Event | None) -> Callable[..., bool]:
    """Run a candidate's check as soon as one of ``width`` places is free:
    one place until ``wide`` is set, ``width`` after."""
    if wide is None or wide.is_set():
        return lambda check, isa: check(isa)
    places = threading.Semaphore(1)

    def widen() -> None:
        wide.wait()
        places.release(width - 1)

    threading.Thread(target=widen, name="stitch-isa-widen", daemon=True).start()

    def gated(check: Callable[[Any], bool], isa: Any) -> bool:
        with places:
            return check(isa)

    return gated


def _isa_candidates(cpu_vec_isa: Any) -> list[Any]:
    """The ISAs ``valid_vec_isa_list`` would check here, in its order ([]
    where it would not check them one by one)."""
    import platform

    from torch._inductor import config

    try:
        if (
            not sys.platform.startswith("linux")
            or platform.machine() not in ("x86_64", "AMD64")
            or config.cpp.vec_isa_ok is not None
            or config.is_fbcode()
        ):
            return []
        flags = cpu_vec_isa.x86_isa_checker()
        return [
            isa
            for isa in cpu_vec_isa.supported_vec_isa_list
            if all(flag in flags for flag in str(isa).split())
        ]
    except (AttributeError, TypeError):
        return []


def _answer(isa: Any) -> bool:
    try:
        passed = bool(isa)
    except Exception:  # noqa: BLE001 - pick_vec_isa asks again and reports it
        passed = False
    with _answered:
        _answers[id(isa)] = passed
        _answered.notify_all()
    return passed


# The probe's candidates in Inductor's order, and each one's answer once its
# whole check (extensions included) has returned, by id (first_valid).
_order: list[Any] = []
_answers: dict[int, bool] = {}
_answered = threading.Condition()


def _new_answers_lock() -> None:
    # A fork can come while a probe thread holds the lock: the child's copy
    # would stay held.  The answers stay: each is the candidate's own
    # (functools.cache on it), which the child holds too.
    global _answered
    _answered = threading.Condition()


os.register_at_fork(after_in_child=_new_answers_lock)


def first_is_picked() -> bool:
    """Whether ``pick_vec_isa`` takes the first valid ISA of Inductor's list:
    unless ``ATEN_CPU_CAPABILITY`` or ``cpp.simdlen`` asks for a particular one."""
    from torch._inductor import config

    return not os.environ.get("ATEN_CPU_CAPABILITY") and config.cpp.simdlen is None


def first_valid(probe: threading.Thread) -> Any | None:
    """The candidate ``pick_vec_isa`` takes, once ``probe`` has answered it and
    every one before it; None where that pick needs every answer (the
    environment's ``ATEN_CPU_CAPABILITY`` or ``cpp.simdlen`` asks for a
    particular ISA), none passed, or the probe ended before it answered
    (NOTE: [a compile waits for the probe only where it asks],
    pipeline/inductor_warmup.py)."""
    if not first_is_picked():
        return None
    with _answered:
        for isa in list(_order):
            while (passed := _answers.get(id(isa))) is None:
                if not probe.is_alive():
                    return None
                _answered.wait(0.05)
            if passed:
                return isa
    return None


def remember_answers() -> None:
    """Have the candidates Inductor checks here answer a check that passed
    before from its record.

    NOTE: [the ISA probe's answers remembered]
    Each candidate's check is a C++ dry compile, which Inductor keeps in its
    cache folder, and a fresh Python process that loads the result, which it
    runs in every process.  On torch 2.11 and 2.12 that process imports torch
    (about 3 s with a CUDA build on 2 cores), so with a warm cache every
    process that compiled for the CPU (a cold start, each spawned compile
    worker, each test's process) spent about 20 s probing, 10 s with the
    candidates side by side; from 2.13 the load is a bare ``dlopen``.  A check
    that passed is now recorded in Inductor's cache folder (``stitch_isa/``),
    keyed by all its answer depends on: the ISA and its flags, the code
    checked, the compiler and its version and torch's version (Inductor's
    own fingerprint of the dry compile), torch's folder, the interpreter and
    the CPU's flags.  A later check with the same key answers True without
    building or loading; any other runs as Inductor's, and a failed check is
    never recorded (a load that timed out on a busy machine is asked again).
    Only the candidate objects Inductor asks are changed (``check_build`` as
    an attribute of each instance), so the answers, and the ISA picked, are
    the ones Inductor reaches.
    """
    from torch._inductor import cpu_vec_isa

    for isa in _isa_candidates(cpu_vec_isa):
        if "check_build" not in vars(isa):
            isa.check_build = _Remembered(isa)
            if hasattr(isa, "_arch_flags"):
                _flags_before_checks.append((isa, isa._arch_flags))


# Each candidate and its compiler flags as they were before any check here
# changed them (a candidate is wrapped, and recorded, once).
_flags_before_checks: list[tuple[Any, str]] = []


def forget_checks_in_flight() -> None:
    """In a process just forked: give each candidate back the flags it had
    before any check, in case the fork came in the middle of one.

    NOTE: [a fork in the middle of a check]
    A candidate's check of an extension (AVX-512's bf16, AMX's fp16) adds the
    extension's flag to the candidate's own flags, checks, and puts back the
    flags it read.  A process forked while another thread was between the two
    holds a candidate whose flags carry the extension, with nobody to put them
    back; its own check would then read them as the base and keep them for
    every kernel.  A forked compile worker calls this before it checks
    anything (NOTE: [a worker forked beside a probe] in
    pipeline/inductor_warmup.py).  A check in flight in the parent leaves
    nothing else behind: its answer is cached only once it returns, and the
    next check of the same candidate waits on the parent's lock file, then
    reuses what it built (Inductor's own ``check_build``)."""
    for isa, flags in _flags_before_checks:
        isa._arch_flags = flags


def asks_wait_for(probe: Callable[[], threading.Thread | None]) -> bool:
    """Have Inductor's list of valid ISAs (what ``pick_vec_isa`` reads, a
    module attribute looked up at each call) wait for ``probe()``'s answers up
    to the candidate it picks, or for its end, when another thread asks (NOTE:
    [a compile waits for the probe only where it asks],
    pipeline/inductor_warmup.py); whether it does."""
    from torch._inductor import cpu_vec_isa

    real = getattr(cpu_vec_isa, "valid_vec_isa_list", None)
    if real is None or getattr(real, "_stitch_waits_for_probe", False):
        return real is not None

    def valid_vec_isa_list() -> Any:
        thread = probe()
        # A thread that forked is dead here: no wait.
        if thread is not None and thread is not threading.current_thread():
            # What pick_vec_isa reads of it, while the probe runs and after
            # (NOTE: [only the ISA Inductor picks is probed]): the same pick.
            if (first := first_valid(thread)) is not None:
                return [first]
            thread.join()
        return real()

    valid_vec_isa_list._stitch_waits_for_probe = True  # type: ignore[attr-defined]
    for name in ("cache_clear", "cache_info", "__wrapped__"):
        if hasattr(real, name):
            setattr(valid_vec_isa_list, name, getattr(real, name))
    cpu_vec_isa.valid_vec_isa_list = valid_vec_isa_list
    return True


class _Remembered:
    """A candidate's ``check_build``, answered from its record when it has one."""

    def __init__(self, isa: Any) -> None:
        self.isa = isa

    def __call__(self, code: str) -> bool:
        path = _record(self.isa, code)
        if path is not None and os.path.isfile(path):
            return True
        # The class's own check (never a bound method: one pickled and read
        # back would be looked up on the instance, and find this).
        passed = bool(type(self.isa).check_build(self.isa, code))
        if passed and path is not None:
            _write(path, str(self.isa))
        return passed


def _record(isa: Any, code: str) -> str | None:
    """Where the record of ``isa`` passing the check of ``code`` is (None
    where the key cannot be made: the check runs as Inductor's)."""
    try:
        from torch._inductor import cpu_vec_isa
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        fingerprint = cpu_vec_isa._get_isa_dry_compile_fingerprint(
            isa.build_arch_flags()
        )
        parts = [
            fingerprint,
            str(isa),
            code,
            os.path.dirname(torch.__file__),
            sys.executable,
            sorted(cpu_vec_isa.x86_isa_checker()),
        ]
        folder = os.path.join(cache_dir(), RECORDS)
    except Exception:  # noqa: BLE001 - a release without these names, no folder
        return None
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    return os.path.join(folder, key)


def _write(path: str, text: str) -> None:
    """Write a record whole (a reader never sees half of one), or not at all."""
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
