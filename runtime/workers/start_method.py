"""How compile workers start, forked or spawned (NOTE: [forked or spawned
compile workers], pipeline/tiered/compile_workers.py), and what a forked one
clears of its parent's exit first."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import torch

log = logging.getLogger("stitch")

# NOTE: [forked or spawned compile workers] (pipeline/tiered/compile_workers.py)
START_ENV = "STITCH_COMPILE_START"


def start_method(example_inputs: Sequence[Any]) -> str:
    """How compile workers start: ``fork`` or ``spawn`` (NOTE: [forked or
    spawned compile workers])."""
    text = os.environ.get(START_ENV, "").strip().lower()
    if text in ("fork", "spawn"):
        return text
    if text:
        log.warning(
            "stitch: $%s=%r is neither fork nor spawn; choosing by the graph's devices",
            START_ENV,
            text,
        )
    if needs_spawn(example_inputs) or not hasattr(os, "fork"):
        return "spawn"
    return "fork"


def needs_spawn(example_inputs: Sequence[Any]) -> str:
    """Why a forked worker cannot compile for this graph ("" when it can)."""
    devices = {v.device.type for v in example_inputs if isinstance(v, torch.Tensor)}
    devices -= {"cpu", "meta"}
    if devices:
        return f"the graph runs on {', '.join(sorted(devices))}"
    if torch.cuda.is_initialized():
        return "this process has initialized CUDA"
    return ""


def forget_the_parents_exit() -> None:
    """In a forked worker: a process of its own, not one exiting.

    NOTE: [a worker forked while its parent exits]
    A trace under way when the process exits normally (transformers' engine
    traces off its thread: NOTE: [the engine serves while Dynamo traces] in
    hf/saved_step.py) ends inside the interpreter's exit, where
    ``threading._shutdown`` joins the compile thread, and the tier it starts
    forks its workers then.  A forked worker inherits the flags that exit set:
    its compile's first ``threading._register_atexit`` raised "can't register
    atexit after shutdown" (concurrent.futures' modules call it when they are
    imported, and ``ThreadPoolExecutor.submit`` refuses after the exit), and
    every piece stayed uncompiled.  The worker has begun no exit of its own,
    so it clears them (where this Python has them) before it compiles.
    """
    import concurrent.futures.thread as executor_threads

    if getattr(threading, "_SHUTTING_DOWN", False):
        threading._SHUTTING_DOWN = False  # type: ignore[attr-defined]
    if getattr(executor_threads, "_shutdown", False):
        executor_threads._shutdown = False  # type: ignore[attr-defined]
    processes = sys.modules.get("concurrent.futures.process")
    if getattr(processes, "_global_shutdown", False):
        processes._global_shutdown = False  # type: ignore[union-attr]
