"""``transformers serve`` through Stitch: transformers' own OpenAI-compatible
server, its continuous batching compiled by a ``StitchBackend``.

::

    python -m stitch.runtime.hf.serve MODEL_DIR --port 8000 --cb-num-blocks 64

The server is transformers' (``transformers.cli.serve.Serve``: its handlers,
FastAPI app and uvicorn); what changes is the generation state, whose
continuous batching manager builds its ``ContinuousBatchingConfig`` with
:func:`~stitch.runtime.hf.engine.continuous_batching_config` from the loaded
model and the backend.  Needs transformers' serving packages (``pip install
'stitch[serve]'``).

NOTE: [how transformers serve gets Stitch's engine config]
transformers 5.23's ``Serve.__init__`` builds everything inline: its
``ContinuousBatchingConfig`` comes from the ``--cb-*`` flags only, and it
constructs ``GenerationState(continuous_batching=, compile=, cb_config=)``
itself, so neither a backend nor a model-dependent config can be passed in.
The config also needs the model (its attention is routed to Stitch's op, NOTE:
[how the engine reaches the paged op] in engine.py), which the server loads
after that point.  So the Stitch parts are two subclasses that take their
collaborators through their constructors: :class:`StitchCBGenerateManager`
builds the config in ``init_cb``, where transformers hands it the loaded model,
and :class:`StitchGenerationState` creates that manager.  The one patch is
the name ``GenerationState`` in ``transformers.cli.serving.utils`` (``Serve``
imports it from there when it is constructed), bound to
:class:`StitchGenerationState` with the backend for the duration of
:func:`serve` and restored after; every other object the server builds is
transformers' own, built with the same arguments
(tests/test_hf_serve.py compares the two servers).  Copying ``Serve.__init__``
instead would fork its wiring (five handlers, the app, uvicorn) and drift from
transformers' releases.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from stitch.core.errors import StitchConfigError

from .engine import continuous_batching_config

try:
    from transformers.cli.serving import utils as serving_utils
    from transformers.utils.import_utils import is_serve_available
except ImportError as exc:  # pragma: no cover - transformers without its CLI
    raise StitchConfigError(
        "stitch.runtime.hf.serve needs transformers' server (transformers>=5.23)"
    ) from exc

if not is_serve_available():  # pragma: no cover - the extra is not installed
    raise StitchConfigError(
        "stitch.runtime.hf.serve needs transformers' serving packages "
        "(pydantic, fastapi, uvicorn, openai): pip install 'stitch[serve]'"
    )

# The --cb-* flags of `transformers serve`, and the ContinuousBatchingConfig
# fields they set (as Serve.__init__ maps them, but for block_size, deprecated
# since 5.17 in favour of page_size).
CB_FLAGS: dict[str, str] = {
    "cb_block_size": "page_size",
    "cb_num_blocks": "num_blocks",
    "cb_max_batch_tokens": "max_batch_tokens",
    "cb_max_memory_percent": "max_memory_percent",
}


class StitchCBGenerateManager(serving_utils.CBGenerateManager):
    """transformers' continuous batching manager for the server, its engine
    config built from the loaded model with ``backend`` (and ``fields``, given to
    ``ContinuousBatchingConfig``) when the first request starts it."""

    def __init__(self, backend: Any, fields: dict[str, Any]) -> None:
        super().__init__(cb_config=None)
        self.backend = backend
        self.fields = dict(fields)

    def init_cb(self, model: Any, gen_config: Any) -> None:
        if self._cb is None:
            self._cb_config = continuous_batching_config(
                model, self.backend, **self.fields
            )
        super().init_cb(model, gen_config)


class StitchGenerationState(serving_utils.GenerationState):
    """transformers' generation state whose continuous batching managers are
    :class:`StitchCBGenerateManager`; takes ``Serve``'s keywords and refuses the
    ones Stitch replaces."""

    def __init__(
        self,
        backend: Any,
        fields: dict[str, Any],
        *,
        continuous_batching: bool = True,
        compile: bool = False,
        cb_config: Any = None,
    ) -> None:
        given = dict(
            continuous_batching=continuous_batching,
            compile=compile,
            cb_config=cb_config,
        )
        wanted = dict(continuous_batching=True, compile=False, cb_config=None)
        for name, value in given.items():
            if value != wanted[name]:
                raise StitchConfigError(
                    f"serve through Stitch: {name}={value!r} is not supported "
                    f"(Stitch compiles the continuous batching engine; expected "
                    f"{wanted[name]!r})"
                )
        super().__init__(continuous_batching=True, compile=False, cb_config=None)
        self.backend = backend
        self.fields = dict(fields)

    def get_manager(self, model_id: str, use_cb: bool = False) -> Any:
        # Create ours where the base class would create its own (a first model,
        # or another model than the running manager's); it returns it then.
        if use_cb and (self._cb_manager is None or self._cb_model_id != model_id):
            if self._cb_manager is not None:
                self._cb_manager.stop()
            self._cb_manager = StitchCBGenerateManager(self.backend, self.fields)
            self._cb_model_id = model_id
        return super().get_manager(model_id, use_cb=use_cb)


@contextlib.contextmanager
def stitch_generation_state(backend: Any, fields: dict[str, Any]) -> Iterator[None]:
    """Within: ``Serve`` builds a :class:`StitchGenerationState` with ``backend``
    (NOTE: [how transformers serve gets Stitch's engine config])."""
    original = serving_utils.GenerationState
    serving_utils.GenerationState = functools.partial(
        StitchGenerationState, backend, fields
    )
    try:
        yield
    finally:
        serving_utils.GenerationState = original


def serve(
    model: str | None,
    backend: Any,
    fields: dict[str, Any] | None = None,
    **options: Any,
) -> Any:
    """Run ``transformers serve`` for ``model`` with continuous batching compiled
    by ``backend``; ``fields`` go to ``ContinuousBatchingConfig``, ``options`` to
    ``Serve`` (``host``, ``port``, ``device``, ``dtype``, ``log_level``, ...).
    Blocks until the server stops unless ``non_blocking=True``; returns the
    ``Serve``."""
    from transformers.cli.serve import Serve

    for name in ("continuous_batching", "attn_implementation", "compile", *CB_FLAGS):
        if name in options:
            raise StitchConfigError(
                f"serve through Stitch: {name}={options[name]!r} is set by Stitch "
                "(continuous batching, the model's default attention routed to its "
                "paged op; give ContinuousBatchingConfig fields as `fields`)"
            )
    with stitch_generation_state(backend, fields or {}):
        # No attn_implementation: transformers loads the model with its default
        # (SDPA, or eager for a model without SDPA such as Gemma 2), and the
        # engine's calls of either reach the paged op (NOTE: [how the engine
        # reaches the paged op] in engine.py).
        return Serve(model, continuous_batching=True, **options)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stitch.runtime.hf.serve",
        description="transformers serve (OpenAI-compatible), its continuous "
        "batching compiled by Stitch",
    )
    parser.add_argument("model", help="model directory or hub id to serve")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", help="e.g. cpu, cuda:0")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--default-seed", type=int, default=None)
    parser.add_argument(
        "--log-level", default="warning", help="transformers' log level"
    )
    parser.add_argument(
        "--cache-dir", default="", help="Stitch's cache (default: its own folder)"
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
        CompilationConfig(splitting_ops=[PAGED_ATTENTION_OP], cache_dir=args.cache_dir)
    )
    fields = {
        field: getattr(args, flag)
        for flag, field in CB_FLAGS.items()
        if getattr(args, flag) is not None
    }
    stitch_log.info("stitch: serving %s, continuous batching %s", args.model, fields)
    serve(
        args.model,
        backend,
        fields,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
        default_seed=args.default_seed,
        log_level=args.log_level,
    )


if __name__ == "__main__":
    main()
