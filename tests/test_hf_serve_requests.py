"""transformers' server through Stitch (``python -m stitch.runtime.hf.serve``)
against bad requests, a dead engine and a stop: each bad request a 400 naming
the value, the engine alive after it (NOTE: [requests refused before the
engine] in runtime/hf/serve_checks.py); /health 200 only once the forward is
compiled (NOTE: [ready means ready]); a dead engine replaced (NOTE: [a dead
engine is replaced]); SIGINT a clean exit (NOTE: [a clean stop]).  The
clients' tests ask a server started as users start it (a tiered start, the
default); those that read when the engine's forward compiled, or a warm start
from its cache, ask one started with ``--no-tiered``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from test_hf_serve import (
    FIELDS,
    FLAGS,
    MAX_TOKENS,
    VOCAB,
    _checkpoint,
    _eager_tokens,
    _free_port,
    _read,
    _text,
    _tokens,
    openai,
)

from stitch.runtime.hf import serve as stitch_serve

from serve_support import health, post

# A word of the tokenizer past the model's vocabulary (embedding rows).
PAST_VOCAB = VOCAB + 72
PROMPTS = [[7, 21, 3, 90, 44], [5, 6], [100, 2, 8, 9, 31, 77, 12, 64, 3], [9]]
PROMPT = PROMPTS[0]
# The soak's length: STITCH_SOAK_SECONDS (.ci/run's extended step runs 180,
# the three minutes, beside the other extended modules); 20 otherwise.
SOAK_SECONDS = float(os.environ.get("STITCH_SOAK_SECONDS", "20"))


def _model_dir(path):
    """The test checkpoint, its tokenizer also holding the word ``big`` for a
    token id past the model's vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    _checkpoint(path)
    vocab = {f"t{i}": i for i in range(VOCAB)}
    vocab["big"] = PAST_VOCAB
    words = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=words).save_pretrained(path)
    return path


class Served:
    """The launcher in a process of its own, on a free port."""

    def __init__(self, model_dir, cache, log_path, flags=()) -> None:
        self.model_dir = str(model_dir)
        self.port = _free_port()
        self.log = open(log_path, "w+", encoding="utf-8")  # noqa: SIM115
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            OMP_NUM_THREADS="1",
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stitch.runtime.hf.serve",
                self.model_dir,
                "--host=127.0.0.1",
                f"--port={self.port}",
                "--device=cpu",
                "--dtype=float32",
                f"--cache-dir={cache}",
                *FLAGS,
                *flags,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        # The server's log when /health first said 200.
        self.log_when_ready = self._wait_ready()
        self.client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{self.port}/v1",
            api_key="unused",
            timeout=300,
            max_retries=0,
        )

    def _wait_ready(self, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited:\n{_read(self.log)}")
            if health(self.port) == 200:
                return _read(self.log)
            time.sleep(0.2)
        pytest.fail(f"/health never said 200:\n{_read(self.log)}")

    def complete(self, prompt, **fields) -> list[int]:
        answer = self.client.completions.create(
            model=self.model_dir, prompt=prompt, max_tokens=MAX_TOKENS, **fields
        )
        return _tokens(answer.choices[0].text)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def eager_tokens(tmp_path_factory):
    """The model folder, and eager's tokens for each of PROMPTS."""
    model_dir = _model_dir(tmp_path_factory.mktemp("serve") / "tiny-llama")
    return model_dir, _eager_tokens(model_dir, PROMPTS)


@pytest.fixture(scope="module")
def model_and_tokens(eager_tokens):
    model_dir, expected = eager_tokens
    return model_dir, expected[0]


@pytest.fixture(scope="module")
def served(model_and_tokens, tmp_path_factory):
    """The server as users start it (its default, a tiered start): what
    clients get."""
    model_dir, _ = model_and_tokens
    root = tmp_path_factory.mktemp("served")
    server = Served(model_dir, root / "cache", root / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def compiled_first(model_and_tokens, tmp_path_factory):
    """A server whose engine forward compiles before it is ready
    (``--no-tiered``): the tests that read when it compiled, and a warm start
    from its cache."""
    model_dir, _ = model_and_tokens
    root = tmp_path_factory.mktemp("compiled_first")
    server = Served(model_dir, root / "cache", root / "server.log", ["--no-tiered"])
    yield server
    server.stop()


# Each bad request: (how it is sent, its body's fields, what the 400 names).
BAD = [
    ("empty prompt", dict(prompt=""), "prompt is empty"),
    ("empty ids", dict(prompt=[]), "prompt is an empty list of token ids"),
    (
        "a word past the vocabulary",
        dict(prompt="t5 big t6"),
        f"token id {PAST_VOCAB} at position 1 is outside the model's vocabulary "
        f"[0, {VOCAB})",
    ),
    (
        "an id past the vocabulary",
        dict(prompt=[5, VOCAB]),
        f"token id {VOCAB} at position 1 is outside the model's vocabulary",
    ),
    (
        "streamed, an id past the vocabulary",
        dict(prompt=[5, VOCAB + 1], stream=True),
        f"token id {VOCAB + 1} at position 1",
    ),
    (
        "max_tokens past the cache",
        dict(prompt="t5 t6", max_tokens=100000),
        "max_tokens=100000 need 100001 cached tokens, but the paged cache holds at "
        "most 512 tokens of one request (num_blocks=32, page_size=16)",
    ),
    (
        "a prompt past the cache",
        dict(prompt=_text([5] * 600), max_tokens=2),
        "its prompt of 600 tokens does not fit",
    ),
    ("max_tokens 0", dict(prompt="t5", max_tokens=0), "max_tokens=0: must be"),
    (
        "temperature on a greedy engine",
        dict(prompt="t5", temperature=0.7),
        "temperature=0.7: this server's engine decodes greedily",
    ),
    ("a penalty", dict(prompt="t5", frequency_penalty=0.5), "frequency_penalty=0.5"),
    ("two prompts", dict(prompt=["t5", "t6"]), "one prompt per request"),
]


@pytest.mark.slow
def test_ready_means_the_forward_is_compiled(compiled_first, model_and_tokens):
    """/health said 200 only after the warm-up compiled the engine's forward; the
    first client request compiles nothing."""
    served = compiled_first
    _, expected = model_and_tokens
    assert "engine forward compiled" in served.log_when_ready, served.log_when_ready
    assert "warmed up in" in served.log_when_ready, served.log_when_ready
    assert served.complete(_text(PROMPT)) == expected
    assert _read(served.log).count("engine forward compiled") == 1
    # Token ids are a prompt too, with the same tokens as their text.
    assert served.complete(PROMPT) == expected


@pytest.mark.slow
@pytest.mark.parametrize("case", [b[0] for b in BAD])
def test_a_bad_request_gets_a_400_naming_it_and_the_next_is_served(
    served, model_and_tokens, case
):
    _, expected = model_and_tokens
    fields, message = next((f, m) for c, f, m in BAD if c == case)
    body = {"model": served.model_dir, "max_tokens": MAX_TOKENS, **fields}
    status, answer = post(served.port, "/v1/completions", body)
    assert status == 400, answer
    error = answer["error"]
    assert message in error["message"], error
    assert error["type"] == "invalid_request_error" and error["param"], error
    # The engine is alive: /health says so, and a good request right after
    # gets eager's tokens.
    assert health(served.port) == 200
    assert served.complete(_text(PROMPT), temperature=0) == expected
    assert "CB worker" not in _read(served.log)


@pytest.mark.slow
def test_the_openai_client_sees_the_refusal(served):
    with pytest.raises(openai.BadRequestError) as caught:
        served.client.completions.create(
            model=served.model_dir, prompt="t5 big", max_tokens=2
        )
    assert caught.value.status_code == 400
    assert f"token id {PAST_VOCAB} at position 1" in str(caught.value)
    # A model without a chat template: a 400 naming it, not a 500.
    status, answer = post(
        served.port,
        "/v1/chat/completions",
        {"model": served.model_dir, "messages": [{"role": "user", "content": "t5"}]},
    )
    assert status == 400 and "has no chat template" in answer["error"]["message"]


@pytest.mark.slow
def test_sigint_stops_the_server_within_ten_seconds(compiled_first, model_and_tokens):
    """A second server on the cache a first one filled (warm, its forward
    loaded before it is ready: ``--no-tiered``), one request, Ctrl+C."""
    model_dir, expected = model_and_tokens
    cache = compiled_first.log.name.replace("server.log", "cache")
    log = compiled_first.log.name + ".sigint"
    second = Served(model_dir, cache, log, ["--no-tiered"])
    try:
        assert "engine forward loaded warm" in second.log_when_ready
        assert second.complete(_text(PROMPT)) == expected
        second.process.send_signal(signal.SIGINT)
        status = second.process.wait(timeout=10)
        text = _read(second.log)
    finally:
        second.stop()
    assert status == 0, text
    assert "stitch: server stopped" in text and "Traceback" not in text, text


@pytest.mark.slow
def test_a_soak_of_good_and_bad_requests(served, eager_tokens):
    """32 clients for SOAK_SECONDS, a tenth of their requests bad: every good
    request gets eager's tokens, every bad one a 400, the engine never
    restarts, and the server's resident memory at the end is within 10% of
    what it was a third of the way in."""
    import concurrent.futures
    import random

    import psutil

    _, expected = eager_tokens
    process = psutil.Process(served.process.pid)
    bad = [fields for _, fields, _ in BAD]
    started = time.monotonic()
    stop_at = started + SOAK_SECONDS
    rss: dict[str, int] = {}
    counts = {"good": 0, "bad": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at and len(failures) < 5:
            if rng.random() < 0.1:
                fields = rng.choice(bad)
                body = {"model": served.model_dir, "max_tokens": MAX_TOKENS, **fields}
                status, answer = post(served.port, "/v1/completions", body)
                ok, kind = status == 400, "bad"
            else:
                i = rng.randrange(len(PROMPTS))
                body = {
                    "model": served.model_dir,
                    "prompt": _text(PROMPTS[i]),
                    "max_tokens": MAX_TOKENS,
                }
                status, answer = post(served.port, "/v1/completions", body)
                ok = status == 200 and (
                    _tokens(answer["choices"][0]["text"]) == expected[i]
                )
                kind = "good"
            with lock:
                counts[kind] += 1
                if not ok:
                    failures.append(f"{kind} {body}: {status} {answer}")

    def sample() -> None:
        time.sleep(SOAK_SECONDS / 3)
        rss["first third"] = process.memory_info().rss

    sampler = threading.Thread(target=sample)
    sampler.start()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(client, range(32)))
    sampler.join()
    rss["end"] = process.memory_info().rss
    assert failures == [], failures
    assert counts["good"] > 32 and counts["bad"] > 0, counts
    log = _read(served.log)
    assert "worker died" not in log and "a new engine serves" not in log
    assert rss["end"] <= 1.1 * rss["first third"], rss
    print(
        f"soak {SOAK_SECONDS:.0f}s: {counts}, rss {rss['first third'] >> 20} MiB "
        f"-> {rss['end'] >> 20} MiB"
    )


# -- a dead engine, in this process ---------------------------------------------


@pytest.mark.slow
def test_a_dead_engine_is_replaced_and_health_says_so_meanwhile(
    model_and_tokens, tmp_path
):
    """The engine's forward raises once: the request in flight gets a 503 that
    says so, /health answers 503 until a new engine serves, later requests get
    eager's tokens again (NOTE: [a dead engine is replaced])."""
    from stitch.runtime import CompilationConfig, StitchBackend
    from stitch.runtime.kernels.paged_attention import PAGED_ATTENTION_OP

    model_dir, expected = model_and_tokens
    port = _free_port()
    backend = StitchBackend(
        CompilationConfig(
            splitting_ops=[PAGED_ATTENTION_OP], cache_dir=str(tmp_path / "cache")
        )
    )
    server = stitch_serve.serve(
        str(model_dir),
        backend,
        dict(FIELDS),
        host="127.0.0.1",
        port=port,
        device="cpu",
        dtype="float32",
        non_blocking=True,
    )
    body = {"model": str(model_dir), "prompt": PROMPT, "max_tokens": MAX_TOKENS}
    try:
        assert server.readiness.event.wait(300), server.readiness.reason
        status, answer = post(port, "/v1/completions", body)
        assert status == 200 and _tokens(answer["choices"][0]["text"]) == expected
        engine_forward = server.generation_state._cb_manager.model.forward
        paged = engine_forward.paged

        def dies_once(*args, **kwargs):
            engine_forward.paged = paged
            raise RuntimeError("injected fault")

        engine_forward.paged = dies_once
        seen = []
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set():
                seen.append(health(port))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            status, answer = post(port, "/v1/completions", body)
            assert status == 503, answer
            assert "injected fault" in json.dumps(answer), answer
            died = time.monotonic()
            while server.replacements == 0 and time.monotonic() - died < 10:
                time.sleep(0.05)
            assert server.replacements == 1, server.readiness.reason
            assert server.readiness.event.wait(10 - (time.monotonic() - died))
        finally:
            watching.set()
            watcher.join()
        assert 503 in seen, seen
        assert health(port) == 200
        status, answer = post(port, "/v1/completions", body)
        assert status == 200 and _tokens(answer["choices"][0]["text"]) == expected
    finally:
        server.stop()
