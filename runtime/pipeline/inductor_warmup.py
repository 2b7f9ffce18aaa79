"""Inductor's warm-up: import it, and probe the CPU's vector ISA in the
background while a backend call splits its graph (NOTE: [Inductor warm-up
overlaps the split])."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import torch

from ..compat import inductor, isa_probe
from ..workers.worker_cpus import take_cpus, worker_cpus

log = logging.getLogger("stitch")


def inductor_ready() -> None:
    """Import Inductor before using it, and wait for the ISA probe if one was
    started and Inductor's first ask for the ISA would not wait for it (NOTE:
    [a compile waits for the probe only where it asks])."""
    inductor.import_inductor()
    if _probe is not None and not _asks_wait():
        widen_probe()  # a compile waits for all of it
        _probe.join()


def _asks_wait() -> bool:
    """Have Inductor's first ask for the ISA wait for the probe; whether it does."""
    return isa_probe.asks_wait_for(lambda: _probe)


def probe_done() -> None:
    """Wait for the ISA probe's end, if one was started."""
    if _probe is not None:
        _probe.join()


# The ISA probe's thread, once start_inductor_warmup(cpu=True) started it.
_probe: threading.Thread | None = None
_probe_lock = threading.Lock()
# Set: the probe checks its candidates side by side; and ``_begin``: it may
# check at all (NOTE: [a pre-started worker probes narrow until its first
# job] in tiered/spawned_workers.py).
_wide = threading.Event()
_wide.set()
_begin = threading.Event()
_begin.set()


def hold_probe() -> None:
    """Before a pre-started worker's imports: the probe, once started, begins
    its checks when :func:`start_inductor_warmup` has imported Inductor or
    :func:`widen_probe` is called, and checks one candidate at a time until
    the latter.

    NOTE: [a pre-started worker's probe waits for its imports]
    A worker started with the backend (NOTE: [a pre-started worker probes
    narrow until its first job], tiered/spawned_workers.py) began its narrow
    probe as soon as the probe's own imports were done, beside the rest of
    Inductor's import: two runnable threads of one worker (the import, and a
    compiler) beside the serving process's trace on 2 cores.  Now the probe
    waits for the worker's imports, unless a job comes first (the worker
    watches its stdin for one, without reading it), since the serving
    process is then past its trace.  ``bench/under_load.py``'s child, the
    example llama at 32 layers, idle, empty caches, ``$STITCH_COMPILE_START=spawn``,
    12 rounds of the two alternating beside a Dynamo-alone run (2-core
    machine, 2026-11-30): the last swap came 10.1 s after the backend call
    by the median, against 12.9 s, sooner in 12 rounds of 12; the first
    output moved within its noise (+1.9 s from Dynamo alone's by the median,
    against +2.6 s).  At 3 layers, where the job comes before the imports
    end, both moved within their noise (docs/performance.md, "A pre-started
    worker's probe after its imports").
    """
    _wide.clear()
    _begin.clear()


def widen_probe() -> None:
    """Let the ISA probe check now, its candidates side by side."""
    _wide.set()
    _begin.set()


def _probe_isa() -> None:
    _begin.wait()
    # Its compiles and fresh interpreters run on every core of the process, as
    # a compile worker does (NOTE: [the cores a compile worker runs on]): not
    # on the one core a pinned serving thread computes on.
    take_cpus(worker_cpus())
    try:
        isa_probe.probe_cpu_isa(wide=_wide)
    except Exception:  # noqa: BLE001 - the real compile reports real errors
        log.debug("Inductor ISA probe failed", exc_info=True)


def start_inductor_warmup(cpu: bool) -> None:
    """Import Inductor now and, for graphs that run on the CPU, probe its vector ISA
    in the background (once); after :func:`hold_probe`, from the end of the
    import, one candidate at a time until :func:`widen_probe`.

    NOTE: [Inductor warm-up overlaps the split]
    The first compile or load of C++ kernels in a process probes the CPU's
    vector ISA: a C++ dry compile per candidate ISA, each loaded by a fresh
    Python process that imports torch (about a second on a CPU machine, 30-45 s
    on the GPU machine with its CUDA torch); the one Inductor picks first, and
    no other after it (all side by side where the environment picks: NOTE:
    [the ISA probe's candidates side by side], NOTE: [the ISA Inductor picks
    is probed first], NOTE: [only the ISA Inductor picks is probed]).  A
    backend call that finds no cache entry for a CPU graph starts the probe
    before it splits the graph and propagates fake tensors, which hides it;
    it fills the cache Inductor would fill on first use anyway.  A graph
    whose tensors are all on a GPU compiles Triton kernels, for which
    Inductor never asks the ISA, so it is not probed (Inductor still probes
    by itself should such a graph hold a CPU kernel).  A warm start loads
    prebuilt pieces, needs neither Inductor nor the probe, and so never
    starts it (see NOTE: [prebuilt pieces]).  Every module the probe
    uses is imported here, in the calling thread, before it starts: two
    threads importing torch's modules at once can see each other's
    half-initialized modules.  The rest of Inductor (a second of imports) is
    imported after it starts, beside it (0.8 s on 2 cores); the probe
    imports none of it.

    NOTE: [a compile waits for the probe only where it asks]
    A compile used to wait for the whole probe before it began, though
    Inductor asks for the ISA only when it generates its first C++ kernel:
    1.5 s into the 3-layer example's compile on 2 cores, after AOT
    Autograd's trace and the lowering.  Now Inductor's list of valid ISAs
    (``valid_vec_isa_list``, which ``pick_vec_isa`` looks up in its module
    at each call) waits for the probe when another thread asks, so a
    compile runs beside the probe until that ask.  It waits for the probe's
    answers, never for one candidate's check: a candidate's ``__bool__``
    changes its own compiler flags while it checks an extension (AVX-512's
    bf16, AMX's fp16) and puts back the flags it read, so two threads in one
    candidate's check at once could leave the extension's flag set for every
    kernel after (a review found it, on this AVX-512 machine).  Waiting at
    the list, no thread checks a candidate the probe checks, so no check is
    built twice.  It waits for the answers up to the candidate
    ``pick_vec_isa`` takes, not for every one (``isa_probe.first_valid``):
    its only reader takes the first valid ISA of the list, unless
    ``ATEN_CPU_CAPABILITY`` or ``cpp.simdlen`` asks for another (then the
    ask waits for the whole probe, as before), and the list is in the order
    the probe answers in.  So an ask gets that one candidate, whose check
    has returned, and the same pick, during the probe and after it; the
    probe checks that candidate first, alone, and no other after it (NOTE:
    [the ISA Inductor picks is probed first], NOTE: [only the ISA Inductor
    picks is probed], compat/isa_probe.py).
    On 2 cores, the 32-layer example with empty caches, three pairs each
    (``bench/tier_timeline.py``): a cold call's first compile ended 0.2 to
    1.7 s before the probe did, where it ended after it; its last compile
    came at 11.2 to 12.7 s from the backend call against 12.4 to 14.2 s, a
    forked tier's at 11.4 to 14.4 s against 13.9 to 15.8 s.  A spawned worker (spawned_workers.py) thus reads its first job while its
    probe runs, and says it is ready (the pool's signal that its start is
    over: NOTE: [an idle worker is not watched]) only when the probe ends.
    Where a release lacks ``valid_vec_isa_list``, the compile waits for the
    whole probe before it begins, as before.
    """
    global _probe
    if cpu:
        inductor.import_isa_probe()
        with _probe_lock:
            if _probe is None:
                _probe = threading.Thread(
                    target=_probe_isa, name="stitch-isa-probe", daemon=True
                )
                _probe.start()
    inductor.import_inductor()
    _begin.set()


def probe_isa() -> None:
    """Probe the CPU's vector ISA now, in the calling thread, importing only
    what the probe uses (a forked tier's probe process: NOTE: [a forked tier
    probes as its build begins], tiered/forked_workers.py)."""
    inductor.import_isa_probe()
    _probe_isa()


def forget_probe() -> None:
    """In a forked compile worker: the parent's probe thread did not come along.

    NOTE: [a worker forked beside a probe]
    A process can fork a tier's workers while a probe it began runs on: a cold
    call's probe (NOTE: [Inductor warm-up overlaps the split]) that no compile
    waited for (a graph with no C++ kernel) is still checking when a later
    graph of the process starts tiered.  The worker inherited the finished
    thread's handle, so its compile waited for nothing and Inductor checked
    the candidates one at a time inside it, from whatever state the fork
    caught (NOTE: [a fork in the middle of a check], compat/isa_probe.py).
    The worker now forgets the handle, starts its own probe with its first
    job, side by side, as any worker does, and gives each candidate back its
    flags from before any check.  A candidate the parent has checked is
    answered from its record (NOTE: [the ISA probe's answers remembered]);
    one it is checking waits on Inductor's lock file for that build, then
    loads it, so nothing is built twice.

    Starting the probe in the serving process at a forked tier's backend
    call, so that the worker would find it done, was tried and not kept: on 2
    cores the 32-layer example's last swap came no sooner, one candidate at
    a time or side by side (docs/performance.md, "The ISA probe from a
    forked tier's backend call: tried, not kept").
    """
    global _probe
    _probe = None
    _wide.set()
    _begin.set()
    isa_probe.forget_checks_in_flight()


def on_cpu(values: Sequence[Any]) -> bool:
    """Whether a graph with these inputs runs (some of) its kernels on the CPU:
    any input tensor on the CPU, or no tensor input at all."""
    devices = {v.device.type for v in values if isinstance(v, torch.Tensor)}
    return not devices or "cpu" in devices
