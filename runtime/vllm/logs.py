"""Stitch's log lines inside a vLLM engine, through vLLM's own handlers.

NOTE: [Stitch logs through vLLM's handlers]
vLLM configures only its own ``vllm`` logger (``vllm/logger.py``: one handler,
its formatter with the process name, the file and the line, propagation off).
Stitch logs under ``stitch``, which inside an engine has no handler: its INFO
lines (one per compile or load) are dropped, and its warnings reach stderr
through Python's last-resort handler, bare and without the engine's prefix.
So when the integration starts, the ``stitch`` logger takes the handlers and
the level of vLLM's logger: a Stitch line then reads like the engine's own, in
the same stream, and follows ``VLLM_LOGGING_LEVEL``.  Nothing changes where
vLLM configured no handler (``VLLM_CONFIGURE_LOGGING=0``, or a logging config
of the user's that leaves ``vllm`` without one), nor where the ``stitch``
logger already has a handler: then the user's configuration decides.
"""

from __future__ import annotations

import logging

STITCH_LOGGER = "stitch"
VLLM_LOGGER = "vllm"


def join_vllm_logging() -> bool:
    """Give the ``stitch`` logger vLLM's handlers and level (idempotent); whether
    it now logs through them."""
    stitch = logging.getLogger(STITCH_LOGGER)
    engine = logging.getLogger(VLLM_LOGGER)
    if not engine.handlers:
        return False
    if stitch.handlers:
        return all(h in engine.handlers for h in stitch.handlers)
    for handler in engine.handlers:
        stitch.addHandler(handler)
    stitch.setLevel(engine.level)
    stitch.propagate = False
    return True
