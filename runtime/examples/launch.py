"""Run a function on local gloo ranks (``launch``), naming the rank that failed first."""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from stitch.core.errors import StitchConfigError, StitchRuntimeError

from ..store.files import atomic_write

DEFAULT_TIMEOUT = timedelta(seconds=60)


def _rank_main(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    init_method: str,
    pg_timeout_s: float,
    result_dir: str,
    args: tuple[Any, ...],
) -> None:
    try:
        dist.init_process_group(
            "gloo",
            init_method=init_method,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=pg_timeout_s),
        )
        result = fn(rank, world_size, *args)
        atomic_write(os.path.join(result_dir, f"rank_{rank}.pkl"), pickle.dumps(result))
        # Nobody leaves while a peer may still need it for a collective.
        dist.barrier()
    except BaseException as exc:
        # NOTE: [which rank failed first]
        # When one rank dies its peers soon fail too (a closed connection, a
        # collective timeout).  Each failure is stamped, so the launcher can name
        # the rank that failed first: that one holds the cause.
        record = {
            "time": time.time(),
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
        with contextlib.suppress(Exception):
            atomic_write(
                os.path.join(result_dir, f"rank_{rank}.err"), pickle.dumps(record)
            )
        raise
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _failure_report(result_dir: str, world_size: int, fallback: str) -> str:
    records = {}
    for rank in range(world_size):
        path = os.path.join(result_dir, f"rank_{rank}.err")
        with contextlib.suppress(OSError, pickle.UnpicklingError, EOFError):
            with open(path, "rb") as f:
                records[rank] = pickle.load(f)
    if not records:
        return fallback
    first = min(records, key=lambda r: records[r]["time"])
    others = sorted(r for r in records if r != first)
    text = (
        f"rank {first} of a {world_size}-rank job failed first "
        f"({records[first]['error']}); the job was stopped"
    )
    if others:
        text += f"; ranks {others} failed after it"
    return f"{text}.\nTraceback of rank {first}:\n{records[first]['traceback']}"


def launch(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: tuple[Any, ...] = (),
    *,
    timeout: float = 300.0,
    pg_timeout: timedelta = DEFAULT_TIMEOUT,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` local gloo ranks.

    Each rank is a spawned process in one gloo process group (rendezvous through
    a FileStore in a private temporary directory) whose collectives time out
    after ``pg_timeout``.  Returns the ranks' (picklable) return values in rank
    order.

    The job never hangs the caller: when a rank raises, the others are stopped
    and a :class:`StitchRuntimeError` names the rank that failed first and
    carries its traceback; when the job is still running after ``timeout``
    seconds, every rank is killed and the error says so.  ``fn`` must be
    importable by name (a module-level function), as spawn requires.
    """
    import torch.multiprocessing as mp

    if type(world_size) is not int or world_size < 1:
        raise StitchConfigError(f"world_size={world_size!r} must be a positive int")
    with tempfile.TemporaryDirectory(prefix="stitch-tp-") as result_dir:
        # NOTE: [rendezvous through a file]
        # A FileStore in a fresh directory needs no port: nothing can take it
        # between choosing and binding, as can happen to a "free" TCP port.
        # gloo's own connections bind ephemeral ports on the loopback address.
        init_method = "file://" + os.path.join(result_dir, "store")
        context = mp.start_processes(
            _rank_main,
            args=(
                fn,
                world_size,
                init_method,
                pg_timeout.total_seconds(),
                result_dir,
                args,
            ),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        try:
            while not context.join(
                timeout=max(0.0, min(1.0, deadline - time.monotonic())),
                grace_period=2.0,
            ):
                if time.monotonic() >= deadline:
                    alive = [r for r, p in enumerate(context.processes) if p.is_alive()]
                    raise StitchRuntimeError(
                        f"ranks {alive} of a {world_size}-rank job were still running "
                        f"after {timeout:g}s and were killed (a hang: a rank waiting "
                        "on a collective that a peer never reached?)"
                    )
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            raise StitchRuntimeError(
                _failure_report(result_dir, world_size, f"{world_size}-rank job: {exc}")
            ) from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join(10)
        results = []
        for rank in range(world_size):
            with open(os.path.join(result_dir, f"rank_{rank}.pkl"), "rb") as f:
                results.append(pickle.load(f))
        return results
