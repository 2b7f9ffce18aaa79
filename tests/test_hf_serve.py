"""``transformers serve`` through Stitch (``python -m stitch.runtime.hf.serve``),
answered by the ``openai`` client, against ``generate_batch`` in eager mode."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch
from engine_support import skip_without_the_server

skip_without_the_server()
from transformers.utils.import_utils import is_serve_available  # noqa: E402

if not is_serve_available():
    pytest.skip(
        "transformers' serving packages (pydantic, fastapi, uvicorn, openai) are "
        "not installed: pip install 'stitch[serve]'",
        allow_module_level=True,
    )
openai = pytest.importorskip("openai")

from stitch.core.errors import StitchConfigError  # noqa: E402
from stitch.runtime.hf import serve as stitch_serve  # noqa: E402
from stitch.runtime.hf.tiny_models import tiny_config  # noqa: E402
from stitch.runtime.pipeline.tiered.controls import TIERED_DEFAULT_ENV  # noqa: E402

VOCAB = 128
MAX_TOKENS = 8
# Small pages and batches, so prompts are prefilled in chunks next to decodes
# (as tests/test_hf_engine.py's _ENGINE); the launcher's --cb-* flags.
FIELDS = dict(page_size=16, num_blocks=32, max_batch_tokens=16, max_memory_percent=0.5)
FLAGS = [
    "--cb-block-size=16",
    "--cb-num-blocks=32",
    "--cb-max-batch-tokens=16",
    "--cb-max-memory-percent=0.5",
]


def _prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randint(3, VOCAB, (n,), generator=generator).tolist()
        for n in (5, 17, 9, 2, 12)
    ]


def _text(tokens: list[int]) -> str:
    return " ".join(f"t{t}" for t in tokens)


def _tokens(text: str) -> list[int]:
    return [int(word[1:]) for word in text.split()]


def _checkpoint(path) -> None:
    """A tiny random-weight Llama, a word-level tokenizer over its vocabulary
    (token ``i`` is the word ``t<i>``) and a greedy generation config without an
    end token, so every request runs its ``max_tokens``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GenerationConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(0)
    config = tiny_config("llama", vocab_size=VOCAB)
    model = LlamaForCausalLM._from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    GenerationConfig(
        do_sample=False, eos_token_id=-1, pad_token_id=0, bos_token_id=1
    ).save_pretrained(path)
    words = Tokenizer(
        models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0")
    )
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=words).save_pretrained(path)


def _eager_tokens(path, prompts) -> list[list[int]]:
    """The same prompts through ``generate_batch``: transformers' paged SDPA,
    uncompiled, in this process."""
    from transformers import (
        ContinuousBatchingConfig,
        GenerationConfig,
        LlamaForCausalLM,
    )

    model = LlamaForCausalLM.from_pretrained(
        path, attn_implementation="sdpa", dtype=torch.float32
    ).eval()
    generation = GenerationConfig(
        max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=-1, pad_token_id=0
    )
    eager = ContinuousBatchingConfig(
        **FIELDS, max_blocks_per_request=0, auto_switch_to_flash=False
    )
    outputs = model.generate_batch(
        prompts, generation, continuous_batching_config=eager
    )
    assert [o.error for o in outputs.values()] == [None] * len(prompts)
    return [o.generated_tokens for o in outputs.values()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(process, port: int, log, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited ({process.returncode}):\n{_read(log)}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/health", timeout=5
            ) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the server did not answer /health in {timeout}s:\n{_read(log)}")


def _wait_for(process, log, text: str, timeout: float = 300.0) -> None:
    """Until the server's log says ``text`` (nothing for ``""``)."""
    deadline = time.monotonic() + timeout
    while text and text not in _read(log):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the server's log never said {text!r}:\n{_read(log)}")
        time.sleep(0.5)


def _read(log) -> str:
    log.flush()
    with open(log.name, encoding="utf-8", errors="replace") as f:
        return f.read()


def _stop(process) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            # A stop the user asked for waits seconds at most for a compile
            # under way (NOTE: [an exit the user asked for waits at most
            # seconds]), then stops it; the server then exits.
            process.wait(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _serve_and_ask(
    model_dir, cache, log_path, prompts, *flags: str, until: str = ""
) -> tuple[list, str, int]:
    """Start the launcher on ``cache``, ask it every prompt through the openai
    client (one first, then the others at once), wait until its log says
    ``until`` (if given), stop it: the tokens, the server's log and its exit
    status."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "stitch.runtime.hf.serve",
        str(model_dir),
        "--host=127.0.0.1",
        f"--port={port}",
        "--device=cpu",
        "--dtype=float32",
        f"--cache-dir={cache}",
        *FLAGS,
        *flags,
    ]
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1"
    )
    with open(log_path, "w+", encoding="utf-8") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        try:
            _wait_healthy(process, port, log)
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1",
                api_key="unused",
                timeout=300,
                max_retries=0,
            )

            def complete(prompt: list[int]) -> list[int]:
                answer = client.completions.create(
                    model=str(model_dir),
                    prompt=_text(prompt),
                    max_tokens=MAX_TOKENS,
                    temperature=0,
                )
                assert answer.usage.prompt_tokens == len(prompt)
                assert answer.usage.completion_tokens == MAX_TOKENS
                return _tokens(answer.choices[0].text)

            # One request (it compiles the model's call), then the others at once.
            got = [complete(prompts[0])]
            with concurrent.futures.ThreadPoolExecutor(len(prompts) - 1) as pool:
                got += list(pool.map(complete, prompts[1:]))
            _wait_for(process, log, until)
        finally:
            _stop(process)
        return got, _read(log), process.returncode


@pytest.mark.slow
def test_openai_client_gets_the_eager_engine_tokens_through_stitch(tmp_path):
    model_dir = tmp_path / "tiny-llama"
    _checkpoint(model_dir)
    prompts = _prompts()
    expected = _eager_tokens(model_dir, prompts)
    assert all(len(t) == MAX_TOKENS for t in expected)

    cache = tmp_path / "cache"
    # The engine's forward compiles off its thread (NOTE: [the engine serves
    # while Dynamo traces]) and a stop waits seconds at most for it: the
    # server is stopped once its log says the forward compiled, every piece
    # in the backend call (--no-tiered: this test checks compiled pieces).
    got, output, status = _serve_and_ask(
        model_dir,
        cache,
        tmp_path / "server.log",
        prompts,
        "--no-tiered",
        until="engine forward compiled",
    )
    assert got == expected
    # Stitch compiled the model's call once (every size dynamic), split at the
    # paged attention of both layers: 2 op pieces and 3 compiled around them.
    assert re.findall(r"stitch: graph \w+: (\d+) pieces", output) == ["5"], output
    assert "engine forward compiled" in output, output
    # SIGTERM stopped it through uvicorn's shutdown, not the kill (NOTE: [a
    # clean stop] in runtime/hf/serve_lifecycle.py).
    assert "Application shutdown complete" in output, output
    assert status in (0, -signal.SIGTERM), output

    # A restart on the same cache loads the saved forward: no compile.
    got, output, status = _serve_and_ask(
        model_dir, cache, tmp_path / "restart.log", prompts
    )
    assert got == expected
    assert "engine forward loaded warm" in output, output
    assert not re.findall(r"stitch: graph \w+: (\d+) pieces", output), output
    assert status in (0, -signal.SIGTERM), output


@pytest.mark.slow
def test_a_server_starts_tiered_by_default_with_eager_tokens_before_its_pieces_compile(
    tmp_path, monkeypatch
):
    """A tiered start is the server's default (NOTE: [a tiered start]; NOTE:
    [where a tiered start is the default]): the warm-up request returns once
    the forward is split, /health says 200, and requests get the eager
    engine's tokens while compile workers build the pieces."""
    monkeypatch.delenv(TIERED_DEFAULT_ENV, raising=False)  # the suite's off switch
    model_dir = tmp_path / "tiny-llama"
    _checkpoint(model_dir)
    prompts = _prompts()
    expected = _eager_tokens(model_dir, prompts)
    # Dynamo's trace runs off the engine's thread, and on a loaded machine it
    # may outlast every request: the stop waits until the workers compile.
    got, output, status = _serve_and_ask(
        model_dir,
        tmp_path / "cache",
        tmp_path / "server.log",
        prompts,
        until="pieces compile in",
    )
    assert got == expected
    assert re.search(r"3 pieces compile in \d+ forked worker", output), output
    assert status in (0, -signal.SIGTERM), output
    # Stopped while its worker compiles, it waits seconds at most for it,
    # then stops it (NOTE: [an exit the user asked for waits at most
    # seconds]), on either way out: no piece is reported as one that stays
    # uncompiled (what did not land compiles at the next start).
    assert "stays uncompiled" not in output, output


@pytest.mark.parametrize(
    ("flags", "tiered"), [((), None), (("--tiered",), True), (("--no-tiered",), False)]
)
def test_the_servers_tiered_flag_sets_the_field_or_leaves_the_default(
    flags: tuple[str, ...], tiered: bool | None
) -> None:
    # None: the backend's default, on for a model on the CPU.
    assert stitch_serve._parser().parse_args(["model", *flags]).tiered is tiered


# -- what the launcher changes in transformers' server ----------------------------


def test_generation_state_makes_stitch_managers_only_for_continuous_batching():
    from transformers.cli.serving.utils import GenerateManager

    backend = object()
    state = stitch_serve.StitchGenerationState(backend, {"num_blocks": 8})
    first = state.get_manager("a@main", use_cb=True)
    assert isinstance(first, stitch_serve.StitchCBGenerateManager)
    assert first.backend is backend and first.fields == {"num_blocks": 8}
    assert state.get_manager("a@main", use_cb=True) is first
    other = state.get_manager("b@main", use_cb=True)
    assert isinstance(other, stitch_serve.StitchCBGenerateManager)
    assert other is not first
    assert type(state.get_manager("a@main")) is GenerateManager
    for refused in (
        dict(continuous_batching=False),
        dict(compile=True),
        dict(cb_config=object()),
    ):
        with pytest.raises(StitchConfigError, match=next(iter(refused))):
            stitch_serve.StitchGenerationState(backend, {}, **refused)
    with pytest.raises(StitchConfigError, match="cb_num_blocks=4 is set by Stitch"):
        stitch_serve.serve("m", backend, cb_num_blocks=4)


def _describe(server) -> dict:
    app = server.server.config.app
    return dict(
        routes=sorted(
            (r.path, tuple(sorted(getattr(r, "methods", None) or ())))
            for r in app.routes
        ),
        handlers={
            name: type(value).__name__
            for name, value in vars(server).items()
            if name.endswith("_handler")
        },
        model_manager={
            k: v
            for k, v in vars(server._model_manager).items()
            if not k.startswith("_")
        },
        state={k: v for k, v in vars(server._generation_state).items()},
    )


@pytest.mark.slow
def test_serve_builds_transformers_server_with_only_the_generation_state_changed():
    """The patched names are restored, and the server built through them differs
    from ``Serve``'s own (same options) only in its generation state's class
    and the backend it holds, and its completion and chat handlers' classes
    (which check each request first: NOTE: [requests refused before the
    engine] in runtime/hf/serve_checks.py)."""
    from transformers.cli.serve import Serve
    from transformers.cli.serving import chat_completion, completion, server
    from transformers.cli.serving import utils as serving_utils

    originals = (
        serving_utils.GenerationState,
        completion.CompletionHandler,
        chat_completion.ChatCompletionHandler,
        server.build_server,
    )
    backend = object()
    options = dict(host="127.0.0.1", device="cpu", dtype="float32")
    ours = stitch_serve.serve(
        None,
        backend,
        {"num_blocks": 8},
        port=_free_port(),
        non_blocking=True,
        **options,
    )
    try:
        assert (
            serving_utils.GenerationState,
            completion.CompletionHandler,
            chat_completion.ChatCompletionHandler,
            server.build_server,
        ) == originals
        # No model named: nothing to warm up, ready at once.
        assert ours.readiness.event.is_set()
        theirs = Serve(
            continuous_batching=True, port=_free_port(), non_blocking=True, **options
        )
        try:
            assert type(ours.serve) is Serve is type(theirs)
            assert type(ours.generation_state) is stitch_serve.StitchGenerationState
            assert type(theirs._generation_state) is originals[0]
            described = _describe(ours.serve), _describe(theirs)
            state = described[0].pop("state"), described[1].pop("state")
            handlers = described[0].pop("handlers"), described[1].pop("handlers")
            assert described[0] == described[1]
            assert state[0].pop("backend") is backend
            assert state[0].pop("fields") == {"num_blocks": 8}
            assert state[0] == state[1]
            assert handlers[0] == {
                **handlers[1],
                "_completion_handler": "StitchCompletionHandler",
                "_chat_handler": "StitchChatCompletionHandler",
            }
        finally:
            theirs.kill_server()
    finally:
        ours.stop()
