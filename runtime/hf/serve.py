"""``transformers serve`` through Stitch: transformers' own OpenAI-compatible
server, its continuous batching compiled by a ``StitchBackend``.

::

    python -m stitch.runtime.hf.serve MODEL_DIR --port 8000 --cb-num-blocks 64

``MODEL_DIR`` holds the model and its tokenizer (transformers' server loads
both).

The server is transformers' (``transformers.cli.serve.Serve``: its handlers,
FastAPI app and uvicorn); what changes is the generation state, whose
continuous batching manager builds its ``ContinuousBatchingConfig`` with
:func:`~stitch.runtime.hf.engine.continuous_batching_config` from the loaded
model and the backend.  Needs transformers' serving packages (``pip install
'stitch[serve]'``).

Stitch's parts of the server are in :mod:`.serve_parts` (NOTE: [how
transformers serve gets Stitch's engine config] there), its life (ready, a
dead engine replaced, a stop) in :mod:`.serve_lifecycle`, and the checks of
each request in :mod:`.serve_checks`.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from stitch.core.errors import StitchConfigError

from ..store.location import CACHE_ENV
from .serve_lifecycle import Readiness, StitchServer
from .serve_parts import (
    StitchCBGenerateManager,
    StitchChatCompletionHandler,
    StitchCompletionHandler,
    StitchGenerationState,
    stitch_generation_state,
)

__all__ = [
    "CB_FLAGS",
    "StitchCBGenerateManager",
    "StitchChatCompletionHandler",
    "StitchCompletionHandler",
    "StitchGenerationState",
    "StitchServer",
    "main",
    "serve",
    "stitch_generation_state",
]

CB_FLAGS: dict[str, str] = {
    "cb_block_size": "page_size",
    "cb_num_blocks": "num_blocks",
    "cb_max_batch_tokens": "max_batch_tokens",
    "cb_max_memory_percent": "max_memory_percent",
}


def serve(
    model: str | None,
    backend: Any,
    fields: dict[str, Any] | None = None,
    *,
    non_blocking: bool = False,
    **options: Any,
) -> StitchServer:
    """Run ``transformers serve`` for ``model`` with continuous batching compiled
    by ``backend``; ``fields`` go to ``ContinuousBatchingConfig``, ``options`` to
    ``Serve`` (``host``, ``port``, ``device``, ``dtype``, ``log_level``, ...).

    The server listens at once; with ``model`` named, /health answers 503 until
    a warm-up request through it has compiled or loaded the engine's forward
    (NOTE: [ready means ready]).  Blocks until SIGINT or SIGTERM stops it
    (NOTE: [a clean stop]) unless ``non_blocking=True``; returns the
    :class:`StitchServer`."""
    from transformers.cli.serve import Serve

    for name in ("continuous_batching", "attn_implementation", "compile", *CB_FLAGS):
        if name in options:
            raise StitchConfigError(
                f"serve through Stitch: {name}={options[name]!r} is set by Stitch "
                "(continuous batching, the model's default attention routed to its "
                "paged op; give ContinuousBatchingConfig fields as `fields`)"
            )
    readiness = Readiness("warming up: compiling or loading the model's forward")
    if model is None:
        readiness.ready()  # models load on request: nothing to warm up
    with stitch_generation_state(backend, fields or {}, readiness):
        # No attn_implementation: transformers loads the model with its default
        # (SDPA, or eager for a model without SDPA such as Gemma 2), and the
        # engine's calls of either reach the paged op (NOTE: [how the engine
        # reaches the paged op] in engine.py).
        built = Serve(model, continuous_batching=True, non_blocking=True, **options)
    server = StitchServer(
        built, readiness, model, options.get("host", "localhost"), options["port"]
    )
    server.start()
    if not non_blocking:
        server.run_until_stopped()
    return server


EPILOG = """\
/health answers 503 {"status": "starting"} until a warm-up request has compiled
or loaded the model's forward, then 200.  A prompt is text or a list of token
ids.  Requests the engine cannot run get a 400 in OpenAI's error shape, naming
the value and the limit, for example:
  {"error": {"message": "prompt is empty: there is no token to continue from",
   "type": "invalid_request_error", "param": "prompt", "code": "empty_prompt"}}
(also: token ids outside the vocabulary, max_tokens below 1, a prompt and
max_tokens the paged cache can never hold, temperature or top_p other than the
engine's, penalties, several prompts, chat without a chat template).
Ctrl+C or SIGTERM stops the server within 10 seconds; a tiered start still
compiling then waits a few seconds for pieces about to land, and the next
start compiles the rest (a second Ctrl+C or SIGTERM exits at once).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stitch.runtime.hf.serve",
        description="transformers serve (OpenAI-compatible), its continuous "
        "batching compiled by Stitch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument(
        "model",
        help="model directory (weights, config and a tokenizer) or hub id to serve",
    )
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", help="e.g. cpu, cuda:0")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--default-seed", type=int, default=None)
    parser.add_argument(
        "--log-level", default="warning", help="transformers' log level"
    )
    parser.add_argument(
        "--cache-dir",
        default="",
        help=f"Stitch's cache folder (default: ${CACHE_ENV} when set, else Stitch's "
        "own folder under the user's cache)",
    )
    parser.add_argument(
        "--tiered",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a tiered start: with a cold cache, serve at once on uncompiled pieces "
        "and swap each compiled piece in as compile workers finish it; on by "
        "default for a model on the CPU, --no-tiered turns it off "
        "(CompilationConfig.tiered_start; docs/cold_start.md)",
    )
    for flag, field in CB_FLAGS.items():
        parser.add_argument(
            "--" + flag.replace("_", "-"),
            type=float if field == "max_memory_percent" else int,
            default=None,
            help=f"ContinuousBatchingConfig.{field}",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    from stitch.runtime import CompilationConfig, StitchBackend

    from ..kernels.paged_attention import PAGED_ATTENTION_OP

    args = _parser().parse_args(argv)
    # Stitch reports each compiled graph ("stitch: graph ...: N pieces") at INFO.
    stitch_log = logging.getLogger("stitch")
    stitch_log.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    stitch_log.addHandler(handler)
    backend = StitchBackend(
        CompilationConfig(
            splitting_ops=[PAGED_ATTENTION_OP],
            cache_dir=args.cache_dir,
            tiered_start=args.tiered,
        )
    )
    fields = {
        field: getattr(args, flag)
        for flag, field in CB_FLAGS.items()
        if getattr(args, flag) is not None
    }
    stitch_log.info("stitch: serving %s, continuous batching %s", args.model, fields)
    server = serve(
        args.model,
        backend,
        fields,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
        default_seed=args.default_seed,
        log_level=args.log_level,
        non_blocking=True,
    )
    status = server.run_until_stopped()
    landed = _land_compile(server.exit_limit())
    # concurrent.futures' idle workers hold nothing: the exit ends them.
    lingering = [
        t.name
        for t in threading.enumerate()
        if t is not threading.main_thread()
        and not t.daemon
        and t.is_alive()
        and getattr(getattr(t, "_target", None), "__module__", "")
        != "concurrent.futures.thread"
    ]
    if not landed:
        # A trace still under way (NOTE: [an exit the user asked for waits at
        # most seconds]): its thread would hold the interpreter's exit.
        lingering.append("Dynamo's trace")
    if lingering:
        # NOTE: [a clean stop] in serve_lifecycle.py: a thread of transformers'
        # that did not stop in time must not hold the exit.
        stitch_log.warning("stitch: exiting past threads %s", ", ".join(lingering))
    else:
        atexit._run_exitfuncs()  # NOTE: [a server's exit skips the teardown]
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# NOTE: [a server's exit skips the teardown]
# Once the server has stopped and its compile workers have landed or been
# stopped, what is left of a normal exit is the ``atexit`` hooks (logging's
# flush, multiprocessing's and Inductor's pools) and the interpreter's
# teardown: a garbage collection over every object torch, transformers and
# Dynamo made, which frees nothing the process's end would not.  That
# collection took 2.2 s of an idle 2-core machine's 3.6 s exit after the last
# swap, and under CI's load the whole exit once passed 10 s (NOTE: [an exit
# the user asked for waits at most seconds]).  So the server runs the hooks itself
# and ends with ``os._exit``; a script's exit (the backend in a user's
# process) is the user's and stays Python's own.


def _land_compile(limit: float | None) -> bool:
    """Wait for the engine forward's trace and the compile workers before the
    interpreter's exit begins (NOTE: [a process that exits normally waits for
    its workers]), ``limit`` seconds at most after a signal stopped the
    server (NOTE: [an exit the user asked for waits at most seconds]): also
    on the way out past lingering threads (``os._exit`` runs no ``atexit``
    hook), and a trace that ended during the exit would start its workers in
    a process already shutting down.  A second Ctrl+C or SIGTERM ends the
    wait, and the exit waits no more."""
    from ..pipeline.tiered.controls import land_before_exit

    try:
        return land_before_exit(limit)
    finally:
        atexit.unregister(land_before_exit)


if __name__ == "__main__":
    main()
