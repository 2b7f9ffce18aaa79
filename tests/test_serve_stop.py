"""transformers' server through Stitch stops only after uvicorn's own shutdown
has ended, however the signal meets the waiting main thread (NOTE: [a signal
that never interrupts a join] in runtime/hf/serve_lifecycle.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("transformers")

# A stand-in for transformers' Serve: a non-daemon "uvicorn" thread that, once
# told to exit, takes 1.5 s over the application's shutdown (transformers'
# lifespan unloads the model: gc.collect, seconds on a loaded machine).  SIGTERM
# comes while the main thread waits in run_until_stopped.
_SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading, time, types

    from stitch.runtime.hf.serve_lifecycle import Readiness, StitchServer

    server = types.SimpleNamespace(
        should_exit=False, config=types.SimpleNamespace(timeout_graceful_shutdown=0)
    )
    ended = threading.Event()

    def uvicorn():
        while not server.should_exit:
            time.sleep(0.05)
        time.sleep(1.5)
        ended.set()

    stub = types.SimpleNamespace(
        server=server,
        _thread=threading.Thread(target=uvicorn, name="uvicorn-thread"),
        _generation_state=types.SimpleNamespace(shutdown=lambda: None),
        _model_manager=types.SimpleNamespace(shutdown=lambda: None),
    )
    stub._thread.start()
    stitch = StitchServer(stub, Readiness(), None, "127.0.0.1", 1)
    threading.Timer(0.7, os.kill, (os.getpid(), signal.SIGTERM)).start()
    status = stitch.run_until_stopped()
    print(f"status {status}, uvicorn's shutdown ended: {ended.is_set()}")
    sys.stdout.flush()
    """)


def test_a_sigterm_stops_the_server_after_uvicorns_shutdown_has_ended():
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "stitch: stopping the server" in done.stderr, done.stderr
    # Before the fix the SIGTERM's KeyboardInterrupt, raised inside Thread.join,
    # marked the still-running thread as ended: the stop returned at once.
    assert "status 0, uvicorn's shutdown ended: True" in done.stdout, (
        done.stdout + done.stderr
    )
