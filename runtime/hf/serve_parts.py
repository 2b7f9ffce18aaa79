"""The parts of transformers' server that Stitch replaces: the continuous
batching manager (its engine config built by Stitch, each tokenized prompt
checked, a dead engine replaceable), the generation state that makes it, the
completion and chat handlers (each request checked first), and the app
(refused requests answered with their 400, /health gated on readiness).

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
and :class:`StitchGenerationState` creates that manager.  The patches are
four names ``Serve`` imports when it is constructed, bound for the duration of
:func:`.serve.serve` and restored after: ``GenerationState`` (to
:class:`StitchGenerationState` with the backend), the completion and chat
handlers (to subclasses that check each request first: NOTE: [requests
refused before the engine] in serve_checks.py) and ``build_server`` (its app
answering a refused request with its 400, and /health with 503 until the
server is ready: NOTE: [ready means ready] in serve_lifecycle.py); every
other object the server builds is transformers' own, built with the same
arguments (tests/test_hf_serve.py compares the two servers).  uvicorn runs
in a thread of its own, so that the main thread can stop the whole server
(NOTE: [a clean stop] in serve_lifecycle.py).  Copying ``Serve.__init__``
instead would fork its wiring (five handlers, the app, uvicorn) and drift from
transformers' releases.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterator
from typing import Any

from stitch.core.errors import StitchConfigError

from .engine import continuous_batching_config
from .serve_checks import CURRENT, RequestRefused, check_body, check_tokens
from .serve_lifecycle import Readiness

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

from transformers.cli.serving import chat_completion as serving_chat  # noqa: E402
from transformers.cli.serving import completion as serving_completion  # noqa: E402
from transformers.cli.serving import server as serving_server  # noqa: E402


class StitchCBGenerateManager(serving_utils.CBGenerateManager):
    """transformers' continuous batching manager for the server, its engine
    config built from the loaded model with ``backend`` (and ``fields``, given to
    ``ContinuousBatchingConfig``) when the first request starts it; every
    tokenized prompt checked before the engine gets it (NOTE: [requests refused
    before the engine] in serve_checks.py), and a dead engine replaceable
    (:meth:`replace`)."""

    def __init__(self, backend: Any, fields: dict[str, Any]) -> None:
        super().__init__(cb_config=None)
        self.backend = backend
        self.fields = dict(fields)
        # What the engine was started with: what a replacement starts with.
        self.model: Any = None
        self.gen_config: Any = None

    def init_cb(self, model: Any, gen_config: Any) -> None:
        if self._cb is None:
            self._cb_config = continuous_batching_config(
                model, self.backend, **self.fields
            )
            self.model, self.gen_config = model, gen_config
        super().init_cb(model, gen_config)

    def dead(self) -> BaseException | None:
        """The error that killed the running engine's worker, if it died."""
        return (
            None if self._cb is None else self._cb.background_thread_status.fatal_error
        )

    def replace(self) -> None:
        """Start a new engine for the model in place of a dead one; the saved
        forward is the old engine's (no compile for the same cache layout)."""
        old, self._cb = self._cb, None
        if old is not None:
            with contextlib.suppress(Exception):
                old.stop(block=True, timeout=2)
        self.init_cb(self.model, self.gen_config)

    def _checked(self, model: Any, inputs: Any, gen_config: Any) -> None:
        asked = CURRENT.get()
        if asked is not None and asked.token_ids is not None:
            # NOTE: [prompts of token ids]: the handler tokenized a stand-in.
            inputs["input_ids"] = list(asked.token_ids)
        processor = self._cb.batch_processor if self._cb is not None else None
        check_tokens(
            list(inputs["input_ids"]),
            vocab_size=model.get_input_embeddings().num_embeddings,
            max_new_tokens=gen_config.max_new_tokens,
            cache=getattr(processor, "cache", None),
            engine_config=self.gen_config,
            asked=asked,
        )

    def generate_streaming(
        self,
        model: Any,
        processor: Any,
        inputs: Any,
        gen_config: Any,
        *args: Any,
        **kw: Any,
    ) -> Any:
        self._checked(model, inputs, gen_config)
        return super().generate_streaming(
            model, processor, inputs, gen_config, *args, **kw
        )

    async def generate_non_streaming(
        self,
        model: Any,
        processor: Any,
        inputs: Any,
        gen_config: Any,
        *args: Any,
        **kw: Any,
    ) -> Any:
        self._checked(model, inputs, gen_config)
        engine = self._cb
        try:
            return await super().generate_non_streaming(
                model, processor, inputs, gen_config, *args, **kw
            )
        except serving_utils.CBWorkerDeadError:
            raise
        except RuntimeError as exc:
            # NOTE: [a request the dying engine failed]
            # transformers' engine fails the requests in flight before it
            # records its fatal error, so the request's failure can reach this
            # handler first, which then reports a per-request failure (a 500)
            # although the worker is dying.  Wait a little for the record: a
            # request the worker took with it gets transformers' own 503.
            status = getattr(engine, "background_thread_status", None)
            for _ in range(100):
                if status is None or status.fatal_error is not None:
                    break
                await asyncio.sleep(0.01)
            if status is not None and status.fatal_error is not None:
                raise serving_utils.CBWorkerDeadError(
                    f"CB worker died during this request: {exc}"
                ) from exc
            raise


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
        for name, value, wanted in (
            ("continuous_batching", continuous_batching, True),
            ("compile", compile, False),
            ("cb_config", cb_config, None),
        ):
            if value != wanted:
                raise StitchConfigError(
                    f"serve through Stitch: {name}={value!r} is not supported "
                    f"(Stitch compiles the continuous batching engine; expected "
                    f"{wanted!r})"
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


class StitchCompletionHandler(serving_completion.CompletionHandler):
    """transformers' ``/v1/completions`` handler, each request checked first
    (:func:`~.serve_checks.check_body`); a prompt of token ids is taken
    (NOTE: [prompts of token ids])."""

    async def handle_request(self, body: dict, request_id: str) -> Any:
        asked = check_body(body, "completions")
        if asked.token_ids is not None:
            # NOTE: [prompts of token ids]
            # transformers' handler takes text only (400 "prompt must be a
            # string") and tokenizes it before it hands the ids to the engine's
            # manager; it gets a one-word stand-in here, and the manager puts
            # the client's ids in its place (StitchCBGenerateManager._checked),
            # so every check and the usage counts see the ids the client sent.
            body["prompt"] = "x"
        token = CURRENT.set(asked)
        try:
            return await super().handle_request(body, request_id)
        finally:
            CURRENT.reset(token)


class StitchChatCompletionHandler(serving_chat.ChatCompletionHandler):
    """transformers' ``/v1/chat/completions`` handler, each request checked first."""

    async def handle_request(self, body: dict, request_id: str) -> Any:
        asked = check_body(body, "chat")
        _, _, processor = self._resolve_model(body)
        tokenizer = getattr(processor, "tokenizer", processor)
        if getattr(processor, "chat_template", None) is None and (
            getattr(tokenizer, "chat_template", None) is None
        ):
            raise RequestRefused(
                f"model {body.get('model')!r} has no chat template (its tokenizer "
                "sets none): send the prompt as text to /v1/completions",
                "messages",
                "no_chat_template",
            )
        token = CURRENT.set(asked)
        try:
            return await super().handle_request(body, request_id)
        finally:
            CURRENT.reset(token)


def _stitch_build_server(original: Any, readiness: Readiness) -> Any:
    """transformers' ``build_server``, its app answering refused requests with
    their 400 and /health with 503 until ``readiness`` says ready."""

    def build_server(*args: Any, **kwargs: Any) -> Any:
        from fastapi.responses import JSONResponse

        app = original(*args, **kwargs)

        async def refused(_request: Any, exc: RequestRefused) -> Any:
            return JSONResponse(exc.body(), status_code=400)

        app.add_exception_handler(RequestRefused, refused)

        @app.middleware("http")
        async def health_gate(request: Any, call_next: Any) -> Any:
            if request.url.path == "/health" and not readiness.event.is_set():
                return JSONResponse(
                    {"status": "starting", "reason": readiness.reason},
                    status_code=503,
                )
            return await call_next(request)

        return app

    return build_server


@contextlib.contextmanager
def stitch_generation_state(
    backend: Any, fields: dict[str, Any], readiness: Readiness | None = None
) -> Iterator[None]:
    """Within: ``Serve`` builds Stitch's generation state (with ``backend``),
    handlers and app (NOTE: [how transformers serve gets Stitch's engine
    config])."""
    readiness = readiness if readiness is not None else Readiness()
    patches = [
        (
            serving_utils,
            "GenerationState",
            functools.partial(StitchGenerationState, backend, fields),
        ),
        (serving_completion, "CompletionHandler", StitchCompletionHandler),
        (serving_chat, "ChatCompletionHandler", StitchChatCompletionHandler),
        (
            serving_server,
            "build_server",
            _stitch_build_server(serving_server.build_server, readiness),
        ),
    ]
    originals = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, value in patches:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in originals:
            setattr(module, name, value)
