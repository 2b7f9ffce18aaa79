"""Inductor's vector ISA probe, its candidates side by side (NOTE: [the ISA
probe's candidates side by side] in runtime/compat/isa_probe.py): the real
dry compiles overlap, and the answer is the one Inductor reaches alone; a
later process answers from the checks that passed (NOTE: [the ISA probe's
answers remembered]), with neither a build nor a load."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
import threading

import pytest

CHILD = textwrap.dedent("""
    import json, os, threading, time
    from torch._inductor import cpu_vec_isa
    from stitch.runtime.compat import inductor, isa_probe

    inductor.import_inductor()
    lock, running, overlap, checks = threading.Lock(), [0], [0], [0]
    real = cpu_vec_isa.VecISA.check_build

    def check_build(self, code):
        with lock:
            running[0] += 1
            checks[0] += 1
            overlap[0] = max(overlap[0], running[0])
        try:
            return real(self, code)
        finally:
            with lock:
                running[0] -= 1

    cpu_vec_isa.VecISA.check_build = check_build
    candidates = isa_probe._isa_candidates(cpu_vec_isa)
    start = time.perf_counter()
    isa_probe.probe_cpu_isa(2)
    seconds = time.perf_counter() - start
    built = checks[0]
    records = os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], isa_probe.RECORDS)
    recorded = sorted(os.listdir(records)) if os.path.isdir(records) else []
    picked = str(cpu_vec_isa.pick_vec_isa())
    valid = [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]
    # Inductor's own answer, one candidate after the other, from new instances
    # (each caches its answer): the builds are in the cache now, so only the
    # loads run again.
    alone = [type(isa)() for isa in candidates]
    alone_valid = [str(isa) for isa in alone if bool(isa)]
    print(json.dumps({
        "candidates": [str(isa) for isa in candidates],
        "overlap": overlap[0],
        "checks": built,
        "recorded": recorded,
        "picked": picked,
        "valid": valid,
        "alone_valid": alone_valid,
        "seconds": seconds,
    }))
    """)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() != "x86_64",
    reason="Inductor probes x86 ISAs one by one only on x86 Linux",
)
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core")
def test_the_probe_builds_its_candidates_side_by_side_and_picks_as_inductor(tmp_path):
    cache = str(tmp_path / "inductor")
    result = probe(cache)
    if len(result["candidates"]) < 2:
        pytest.skip(f"this CPU offers one vector ISA: {result['candidates']}")
    # An empty cache: every candidate's dry compile ran, two at a time.
    assert result["overlap"] >= 2, result
    # The same list as Inductor's, in its order, and its first pick.
    assert result["valid"] == result["alone_valid"], result
    assert result["picked"] in result["valid"], result
    # Each check that passed is recorded (at least one per valid ISA).
    assert len(result["recorded"]) >= len(result["valid"]), result
    # A later process with the same cache answers every check from them, and
    # reaches the same list.
    again = probe(cache)
    assert again["checks"] == 0, again
    assert again["recorded"] == result["recorded"], again
    assert (again["valid"], again["picked"]) == (result["valid"], result["picked"])
    assert again["alone_valid"] == result["valid"], again


def probe(cache: str) -> dict:
    """The child's findings, probing with Inductor's cache in ``cache``."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        env=dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# A compile begun while the probe checks (NOTE: [a compile waits for the probe
# only where it asks] in runtime/pipeline/inductor_warmup.py).
COMPILE_BESIDE = textwrap.dedent("""
    import collections, json, threading
    import torch
    from torch._inductor import cpu_vec_isa
    from stitch.runtime.compat import isa_probe
    from stitch.runtime.pipeline import inductor_warmup

    real = cpu_vec_isa.VecISA.check_build
    built, lock = collections.Counter(), threading.Lock()

    def check_build(self, code):
        with lock:
            built[(str(self), code)] += 1
        return real(self, code)

    cpu_vec_isa.VecISA.check_build = check_build
    inductor_warmup.start_inductor_warmup(cpu=True)
    inductor_warmup.inductor_ready()
    probing = inductor_warmup._probe.is_alive()  # the compile need not wait

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
    """)


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
    # With an empty cache the probe builds for seconds: the compile went on.
    assert result["probing"], result
    # The compile's own asks waited for the probe's checks, or made them
    # itself: never the same check twice.
    assert result["twice"] == [] and result["checks"] > 0, result
    assert result["equal"], result
    # Inductor's own pick (the first valid ISA; the first test checks the
    # list against Inductor's alone).
    assert result["picked"] == result["valid"][0], result


def test_inductors_list_of_valid_isas_waits_for_the_whole_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torch._inductor import cpu_vec_isa

    from stitch.runtime.pipeline import inductor_warmup

    monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", lambda: ["an ISA"])
    release = threading.Event()
    probe = threading.Thread(target=release.wait, args=(60,), daemon=True)
    probe.start()
    monkeypatch.setattr(inductor_warmup, "_probe", probe)
    inductor_warmup.inductor_ready()  # no wait: the ask does
    assert probe.is_alive()
    got: list = []
    # What pick_vec_isa calls, from another thread (a compile's).
    asker = threading.Thread(
        target=lambda: got.append(cpu_vec_isa.valid_vec_isa_list())
    )
    asker.start()
    asker.join(0.5)
    assert asker.is_alive() and got == []  # waiting for the probe's end
    release.set()
    asker.join(60)
    assert got == [["an ISA"]]
