"""A process that must not start child processes (NOTE: [a process that
cannot start compile workers], runtime/workers/spawned_pool.py).

The process under test is a real sandbox: after its first compile (which
warms Inductor: its vector ISA probe and C++ builds start processes of their
own) it installs a seccomp filter with ``SECCOMP_FILTER_FLAG_TSYNC``, so that
the kernel refuses ``fork``, ``vfork`` and every ``clone`` that is not a
thread with EPERM (``clone3`` with ENOSYS, which makes glibc create threads
with ``clone``), as a container runtime's or a browser's sandbox does.  Then
a tiered start, forked and spawned, must compile in the process with one
warning each, never crash nor hang, and give eager's numbers.  The filter is
written for x86-64 Linux; elsewhere the test skips.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stitch.runtime.pipeline.tiered.controls import TIERED_DEFAULT_ENV

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        sys.platform != "linux" or platform.machine() != "x86_64",
        reason="the seccomp filter here is x86-64 Linux's",
    ),
]

RESULT = "SANDBOX "

SANDBOXED = textwrap.dedent("""
    import ctypes, errno, json, logging, os, struct, sys, torch

    from stitch.runtime import CompilationConfig, StitchBackend
    from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs

    root = sys.argv[1]
    warnings = []

    class Count(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    logging.getLogger("stitch").addHandler(Count())
    cfg = LlamaConfig(num_layers=1)
    model = build_llama(cfg)
    args = llama_inputs(cfg, 8)

    def run(fn):
        model.reset_kv_caches()
        with torch.no_grad():
            return fn(*args)

    def compiled(fields, cache):
        backend = StitchBackend(CompilationConfig(cache_dir=cache, **fields))
        torch._dynamo.reset()
        return backend, torch.compile(model, backend=backend, dynamic=True)

    want = run(model)
    # Before the sandbox: a compile warms Inductor (it starts processes).
    _, fn = compiled({"tiered_start": False}, root + "/before")
    run(fn)

    def sandbox():
        # struct sock_filter {u16 code; u8 jt, jf; u32 k}; a jump goes to
        # pc + 1 + jt (or jf).  seccomp_data: nr at 0, arch at 4, args at 16.
        ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
        allow = 0x7FFF0000
        eperm, enosys = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
        prog = [
            (ld, 0, 0, 4),  # 0: arch
            (jeq, 1, 0, 0xC000003E),  # 1: x86-64 -> 3
            (ret, 0, 0, allow),  # 2
            (ld, 0, 0, 0),  # 3: the syscall's number
            (jeq, 0, 1, 435),  # 4: clone3 -> 5, else 6
            (ret, 0, 0, enosys),  # 5: glibc then makes threads with clone
            (jeq, 5, 0, 57),  # 6: fork -> 12
            (jeq, 4, 0, 58),  # 7: vfork -> 12
            (jeq, 0, 4, 56),  # 8: clone -> 9, else 13
            (ld, 0, 0, 16),  # 9: its flags
            (jset, 0, 1, 0x10000),  # 10: CLONE_THREAD -> 11, else 12
            (ret, 0, 0, allow),  # 11
            (ret, 0, 0, eperm),  # 12
            (ret, 0, 0, allow),  # 13
        ]
        raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
        buf = ctypes.create_string_buffer(raw, len(raw))
        fprog = ctypes.create_string_buffer(
            struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(buf)), 16
        )
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            raise OSError(ctypes.get_errno(), "prctl")
        # seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog):
        # every thread of the process, not this one alone.
        if libc.syscall(317, 1, 1, fprog) != 0:
            raise OSError(ctypes.get_errno(), "seccomp")

    sandbox()
    try:
        os.fork()
    except PermissionError:
        refused = True
    else:
        refused = False
        os._exit(0)
    out = {"fork_refused": refused}
    # A forked tiered start: the call compiles here, one warning.
    backend, fn = compiled({"tiered_start": True}, root + "/forked")
    first = run(fn)
    out["forked_first_equal"] = bool(torch.allclose(first, want, rtol=1e-4, atol=1e-4))
    # The stitching is built, and its pieces compiled here, after the first
    # forward (NOTE: [Dynamo's graph serves while the stitching is built]).
    tier = backend.compiled[-1].tier
    again = [run(fn) for _ in range(3)][-1]  # landed pieces swap in here
    out["forked_equal"] = bool(torch.allclose(again, want, rtol=1e-4, atol=1e-4))
    out["forked_swapped"] = tier is not None and tier.settled and not tier.failed
    out["forked_cannot_start"] = backend.spawned_pool.cannot_start
    # A backend sharing the pool compiles here too, without trying again.
    shared = StitchBackend(
        CompilationConfig(cache_dir=root + "/again", tiered_start=True),
        spawned_pool=backend.spawned_pool,
    )
    torch._dynamo.reset()
    again = run(torch.compile(model, backend=shared, dynamic=True))
    out["again_equal"] = bool(torch.allclose(again, want, rtol=1e-4, atol=1e-4))
    out["again_tier"] = shared.compiled[-1].tier is not None
    out["forked_warnings"] = list(warnings)
    warnings.clear()
    # Spawned: the pool is started when the backend is made, and fails there.
    os.environ["STITCH_COMPILE_START"] = "spawn"
    backend, fn = compiled({"tiered_start": True}, root + "/spawned")
    out["spawned_equal"] = bool(torch.allclose(run(fn), want, rtol=1e-4, atol=1e-4))
    out["spawned_tier"] = backend.compiled[-1].tier is not None
    out["spawned_cannot_start"] = backend.spawned_pool.cannot_start
    out["spawned_warnings"] = list(warnings)
    print("SANDBOX " + json.dumps(out), flush=True)
    """)


def test_a_sandbox_that_forbids_new_processes_compiles_here_with_one_warning(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != TIERED_DEFAULT_ENV}
    env.update(
        TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
        # Inductor's own compile pool would be processes too.
        TORCHINDUCTOR_COMPILE_THREADS="1",
    )
    done = subprocess.run(
        [sys.executable, "-c", SANDBOXED, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT)]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-5000:]
    out = json.loads(lines[-1][len(RESULT) :])
    assert out["fork_refused"], out
    # Forked: one warning naming why, the pieces compiled in this process and
    # swapped in, eager's numbers throughout.
    assert len(out["forked_warnings"]) == 1, out
    assert "PermissionError" in out["forked_warnings"][0], out
    assert "cannot be started" in out["forked_warnings"][0], out
    assert out["forked_cannot_start"].startswith("PermissionError"), out
    assert out["forked_first_equal"] and out["forked_equal"], out
    assert out["forked_swapped"], out
    assert out["again_equal"] and not out["again_tier"], out
    # Spawned: one warning when the backend is made, and the call compiles
    # before it returns (no tier), with eager's numbers.
    assert len(out["spawned_warnings"]) == 1, out
    assert "PermissionError" in out["spawned_warnings"][0], out
    assert not out["spawned_tier"] and out["spawned_equal"], out
