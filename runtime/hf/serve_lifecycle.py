"""The life of transformers' server through Stitch: ready only once it can
serve, a dead engine replaced, and a stop on SIGINT or SIGTERM.

NOTE: [ready means ready]
transformers' server answers /health with 200 as soon as it listens, but its
engine starts, and Stitch compiles the engine's forward, only with the first
request (20-30 s on the 2-core machine with empty caches): a load balancer
that trusts /health sends that request straight into the compile.  The
launcher's server answers /health with 503 ``{"status": "starting"}`` until a
warm-up request (a two-token prompt of token ids, two new tokens) has gone
through the server to the engine and back; only then 200.  The warm-up's
generation config is the model's, the same a client's request gets when it
sets no sampling field, so it starts the engine as such a request would.

NOTE: [a dead engine is replaced]
Stitch refuses the requests that would kill transformers' engine worker
(NOTE: [requests refused before the engine] in serve_checks.py); should it
die anyway, transformers fails its requests in flight with a 503 and answers
every later request with 503 too, for good.  A supervisor thread polls the
worker (every 0.2 s): on its death /health answers 503 ``{"status":
"starting"}`` naming the error, the dead engine is stopped, a new one is
started for the same model and config (its saved forward is the old one's: no
compile) and warmed up, and /health answers 200 again.  Requests that arrive
meanwhile get transformers' 503; later ones are served.

NOTE: [a clean stop]
transformers runs uvicorn in the main thread, which catches SIGINT, but the
engine's worker thread is not a daemon and nobody stops it, so the process
never exits after Ctrl+C.  Here uvicorn runs in a thread of its own (uvicorn
installs no signal handlers outside the main thread); the main thread waits
for SIGINT or SIGTERM, then stops uvicorn (in-flight requests get
:data:`DRAIN_SECONDS` to finish), stops the engine (requests still in it are
failed), unloads the model, and returns.  A tiered start still compiling
then waits for its compile workers until ``EXIT_SECONDS`` after the signal,
for the pieces about to land, then stops them: the process exits within
10 s, the cache keeps what landed and the next start compiles the rest (NOTE:
[an exit the user asked for waits at most seconds]); a second Ctrl+C or
SIGTERM ends that wait at once.

NOTE: [a signal that never interrupts a join]
The main thread must not wait for SIGINT or SIGTERM inside ``Thread.join``
with a handler that raises: before Python 3.13, an exception raised while
``join`` waits on uvicorn's thread marks that thread as ended while it still
runs (``Thread._wait_for_tstate_lock`` releases the lock the running thread
holds).  The stop's ``join`` then returned at once, and the exit went past
uvicorn's shutdown while the application's shutdown was still unloading the
model (seen under load: no "Application shutdown complete").  The handlers
only set an event; the main thread waits on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger("stitch")

# How long in-flight requests get to finish once a stop is asked for.
DRAIN_SECONDS = 5.0
# Seconds from a stopping signal until the exit stops compile workers that
# still compile (NOTE: [a clean stop]): the rest of 10 s is the exit's own.
EXIT_SECONDS = 4.0
# How often the supervisor looks at the engine's worker.
POLL_SECONDS = 0.2
# How long a warm-up request may take (a cold compile on a slow machine).
WARM_UP_SECONDS = 900.0


class Readiness:
    """Whether the server can serve: /health answers 503 with ``reason`` until
    :meth:`ready` (NOTE: [ready means ready])."""

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        self.event = threading.Event()
        if not reason:
            self.event.set()

    def ready(self) -> None:
        self.reason = ""
        self.event.set()

    def wait_for(self, reason: str) -> None:
        self.reason = reason
        self.event.clear()


class StitchServer:
    """transformers' ``Serve`` (built non-blocking), with its readiness, the
    supervisor of its engine, and its stop."""

    def __init__(
        self,
        serve: Any,
        readiness: Readiness,
        model: str | None,
        host: str,
        port: int,
    ) -> None:
        self.serve = serve
        self.readiness = readiness
        self.model = model
        # Where this process reaches its own server.
        self.url = f"http://{_loopback(host)}:{port}"
        self.stopping = threading.Event()
        # When a signal asked the server to stop (time.monotonic), else None.
        self.asked_at: float | None = None
        self.replacements = 0
        self._supervisor: threading.Thread | None = None

    @property
    def generation_state(self) -> Any:
        return self.serve._generation_state

    # -- start ------------------------------------------------------------------
    def start(self) -> None:
        """Warm up (NOTE: [ready means ready]) and supervise the engine, in a
        thread of their own."""
        self._supervisor = threading.Thread(
            target=self._supervise, name="stitch-serve-supervisor", daemon=True
        )
        self._supervisor.start()

    def warm_up(self) -> None:
        """One request through the server to the engine and back."""
        if self.model is None:
            return
        body = json.dumps(
            {"model": self.model, "prompt": [0, 0], "max_tokens": 2}
        ).encode()
        request = urllib.request.Request(
            f"{self.url}/v1/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        started = time.perf_counter()
        deadline = time.monotonic() + WARM_UP_SECONDS
        while not self.stopping.is_set():
            try:
                with urllib.request.urlopen(request, timeout=WARM_UP_SECONDS) as r:
                    r.read()
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:500]
                raise RuntimeError(
                    f"the warm-up request failed with {exc.code}: {detail}"
                ) from None
            except (urllib.error.URLError, ConnectionError):
                # uvicorn is not listening yet.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        log.info(
            "stitch: serving %s: warmed up in %.2fs",
            self.model,
            time.perf_counter() - started,
        )

    def _supervise(self) -> None:
        try:
            self.warm_up()
        except Exception as exc:  # noqa: BLE001 - reported, the server stays up
            log.error("stitch: serving %s: warm-up failed: %s", self.model, exc)
            self.readiness.wait_for(f"warm-up failed: {exc}")
            return
        self.readiness.ready()
        while not self.stopping.wait(POLL_SECONDS):
            manager = self.generation_state._cb_manager
            dead = getattr(manager, "dead", lambda: None)()
            if dead is None:
                continue
            self.readiness.wait_for(f"the engine's worker died ({dead}); restarting it")
            log.error(
                "stitch: serving %s: the engine's worker died (%s: %s); starting a "
                "new one",
                self.model,
                type(dead).__name__,
                dead,
            )
            try:
                manager.replace()
                self.warm_up()
            except Exception as exc:  # noqa: BLE001 - reported; tried again
                log.error("stitch: serving %s: restart failed: %s", self.model, exc)
                continue
            self.replacements += 1
            self.readiness.ready()
            log.warning("stitch: serving %s: a new engine serves", self.model)

    # -- stop -------------------------------------------------------------------
    def run_until_stopped(self) -> int:
        """Wait for SIGINT or SIGTERM (or the server's end), then :meth:`stop`;
        the exit status."""
        # Both, SIGINT too: a shell starts a background job with SIGINT
        # ignored, and Python then installs no handler of its own.  The
        # handler only sets an event (NOTE: [a signal that never interrupts a
        # join]).
        asked = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda signum, frame: asked.set())
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            while self.serve._thread.is_alive():
                if asked.wait(0.5):
                    self.asked_at = time.monotonic()
                    log.warning("stitch: stopping the server")
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stop()
        return 0

    def exit_limit(self) -> float | None:
        """Seconds the exit may still wait for compile workers (None: until
        they land, when no signal stopped the server; NOTE: [a clean stop])."""
        if self.asked_at is None:
            return None
        return max(0.0, EXIT_SECONDS - (time.monotonic() - self.asked_at))

    def stop(self) -> None:
        """Stop uvicorn (in-flight requests get :data:`DRAIN_SECONDS`), the engine
        and the model manager (NOTE: [a clean stop])."""
        self.stopping.set()
        server = self.serve.server
        server.config.timeout_graceful_shutdown = DRAIN_SECONDS
        server.should_exit = True
        thread = self.serve._thread
        if thread is not None:
            thread.join(DRAIN_SECONDS + 1)
        with contextlib.suppress(Exception):
            self.generation_state.shutdown()
        with contextlib.suppress(Exception):
            self.serve._model_manager.shutdown()
        log.info("stitch: server stopped")


def _loopback(host: str) -> str:
    """The address this process reaches a server listening on ``host`` at."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "localhost", "::") else host
