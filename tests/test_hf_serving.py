"""A transformers causal LM served in the token layout (stitch.runtime.hf.serving).

The served model (``attn_implementation="stitch"`` with serving KV caches) is
checked against transformers' own eager attention over whole sequences, the
same weights, over decode steps of changing batch; compiled by Stitch with CUDA
graphs emulated on CPU (tests/test_cudagraph_cpu.py) it must take the padded
graphs in every mode and match the eager served model, caches included.
"""

from __future__ import annotations

import copy
import logging
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from aot_worker import dynamo_calls  # noqa: E402

from stitch.core.errors import StitchConfigError, StitchRuntimeError  # noqa: E402
from stitch.runtime import (  # noqa: E402
    CompilationConfig,
    StitchBackend,
    compilation_counter,
)
from stitch.runtime.cudagraph import CUDAGraphManager, EmulatedGraphOps  # noqa: E402
from stitch.runtime.hf import build_model  # noqa: E402
from stitch.runtime.hf.attn_implementation import (
    K_CACHE,
    stitch_attention_forward,
)  # noqa: E402
from stitch.runtime.hf.serving import (  # noqa: E402
    PAD_VALUES,
    attach_kv_caches,
    attention_modules,
    build_serving_llama,
    kv_caches,
    random_weights,
    reset_kv_caches,
    serving_inputs,
)

SHAPE = dict(
    vocab_size=128,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,  # grouped-query attention
    intermediate_size=128,
    max_seqs=16,
    max_len=32,
)
SIZES = [1, 2, 4, 8]
# Inside, between and above the capture sizes (16 = max_seqs runs without graphs).
CALLS = [3, 8, 1, 5, 2, 12, 7, 4, 16, 6]
PIECES = 3  # compiled pieces of 2 layers: before, between and after the attentions
NO_GUARDS = {"guard_filter_fn": lambda entries: [False] * len(entries)}


class Decode:
    """Decode steps in the token layout: step ``n`` gives slots ``0 .. n-1`` one
    new token each, at the slot's next position; what each slot was fed and
    the logits it got are kept."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        self.vocab = vocab
        self.gen = torch.Generator().manual_seed(seed)
        self.tokens: dict[int, list[int]] = {}
        self.logits: dict[int, list[torch.Tensor]] = {}

    def inputs(self, n: int) -> dict[str, Any]:
        ids = torch.randint(0, self.vocab, (n, 1), generator=self.gen)
        positions = torch.tensor([[len(self.tokens.get(i, []))] for i in range(n)])
        for i in range(n):
            self.tokens.setdefault(i, []).append(int(ids[i, 0]))
        return {"input_ids": ids, "position_ids": positions}

    def record(self, logits: torch.Tensor) -> None:
        for i in range(logits.shape[0]):
            self.logits.setdefault(i, []).append(logits[i, 0].clone())

    def run(self, forward: Callable[..., Any], steps: list[int]) -> None:
        with torch.inference_mode():
            for n in steps:
                self.record(forward(**self.inputs(n)).logits)


def check_against_whole_sequences(decode: Decode, reference: torch.nn.Module) -> None:
    """Each slot's logits equal the reference's over the slot's whole sequence."""
    with torch.inference_mode():
        for slot, tokens in decode.tokens.items():
            ids = torch.tensor([tokens])
            expected = reference(input_ids=ids, use_cache=False).logits[0]
            got = torch.stack(decode.logits[slot])
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_served_llama_matches_transformers_over_decode_steps() -> None:
    served = build_serving_llama(**SHAPE)
    config = copy.deepcopy(served.config)
    reference = type(served)._from_config(config, attn_implementation="sdpa").eval()
    reference.load_state_dict(served.state_dict())  # the caches are not state
    decode = Decode(SHAPE["vocab_size"])
    decode.run(served, [4, 4, 2, 4, 3, 1, 4, 4])
    check_against_whole_sequences(decode, reference)


# Sliding windows (Mistral, Gemma 2, GPT-OSS: window 8, passed at 12 steps),
# logit softcapping (Gemma 2) and attention sinks (GPT-OSS) reach the op.
@pytest.mark.parametrize("name", ["qwen2", "mistral", "gemma2", "gpt_oss"])
def test_families_match_transformers_eager_attention(name: str) -> None:
    served = build_model(name, attn_implementation="stitch")
    random_weights(served)  # transformers' init barely bends the scores
    attach_kv_caches(served, max_seqs=3, max_len=16)
    reference = build_model(name, attn_implementation="eager")
    reference.load_state_dict(served.state_dict())
    decode = Decode(served.config.vocab_size)
    decode.run(served, [3, 2, 3, 3, 1, 3, 3, 2, 3, 3, 3, 3, 3])
    check_against_whole_sequences(decode, reference)


def test_a_padding_row_writes_nothing() -> None:
    model = build_serving_llama(**SHAPE)
    inputs = serving_inputs(model, 4, seed=1)
    with torch.inference_mode():
        model(**inputs)
        before = [c.clone() for c in kv_caches(model)]
        inputs = serving_inputs(model, 4, seed=2)
        inputs["position_ids"][3] = -1
        model(**inputs)
    for old, new in zip(before, kv_caches(model), strict=True):
        assert torch.equal(old[3], new[3])  # the padding row's slot
        assert not torch.equal(old[:3], new[:3])
    reset_kv_caches(model)
    assert all(not c.any() for c in kv_caches(model))


def test_serving_inputs() -> None:
    model = build_serving_llama(**SHAPE)
    inputs = serving_inputs(model, 5, seed=3)
    assert inputs["input_ids"].shape == inputs["position_ids"].shape == (5, 1)
    assert inputs["use_cache"] is False
    assert int(inputs["position_ids"].max()) < SHAPE["max_len"]
    assert torch.equal(
        inputs["input_ids"], serving_inputs(model, 5, seed=3)["input_ids"]
    )
    with pytest.raises(StitchConfigError, match=r"n=17 tokens must be in \[1, 16\]"):
        serving_inputs(model, 17)
    caches = kv_caches(model)
    assert len(caches) == 2 * SHAPE["num_layers"]
    assert caches[0].shape == (16, 32, 2, 16) and caches[0].dtype == torch.float32
    assert not any(K_CACHE in key for key in model.state_dict())


# -- refusals ------------------------------------------------------------------------------
@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_serving_llama(**SHAPE)


def test_more_than_one_token_per_row_is_refused(model: torch.nn.Module) -> None:
    ids = torch.zeros(2, 3, dtype=torch.long)
    positions = torch.arange(3).expand(2, 3)
    with pytest.raises(
        StitchRuntimeError,
        match=r"LlamaAttention \(layer 0\) \(serving KV caches\): 3 query and 3 key",
    ):
        model(input_ids=ids, position_ids=positions)


def test_a_forward_without_positions_is_refused(model: torch.nn.Module) -> None:
    with pytest.raises(StitchRuntimeError, match="position_ids=None; pass each"):
        model(input_ids=torch.zeros(2, 1, dtype=torch.long))


@pytest.mark.parametrize("key", ["use_cache", "past_key_values", "cache"])
def test_transformers_cache_is_refused(model: torch.nn.Module, key: str) -> None:
    from transformers import DynamicCache

    inputs = serving_inputs(model, 2)
    inputs[key] = True if key == "use_cache" else DynamicCache(config=model.config)
    with pytest.raises(StitchRuntimeError, match=f"{key}=.*keeps its own caches"):
        model(**inputs)


def test_attention_without_positions_is_refused(model: torch.nn.Module) -> None:
    """A model that does not pass position_ids on to its attention."""
    module = attention_modules(model)[1][1]
    q = torch.zeros(2, 4, 1, 16)
    kv = torch.zeros(2, 2, 1, 16)
    with pytest.raises(
        StitchRuntimeError,
        match=r"\(layer 1\) \(serving KV caches\): position_ids=None",
    ):
        stitch_attention_forward(module, q, kv, kv, None)
    with pytest.raises(
        StitchRuntimeError, match=r"position_ids=<tensor \(2, 1\) torch.float32>"
    ):
        stitch_attention_forward(
            module, q, kv, kv, None, position_ids=torch.zeros(2, 1)
        )


@pytest.mark.usefixtures("fresh_dynamo")
def test_a_compiled_forward_without_positions_is_refused(
    model: torch.nn.Module,
) -> None:
    """Dynamo traces the check: under fullgraph its error carries the refusal."""
    compiled = torch.compile(model, backend="stitch", fullgraph=True)
    with pytest.raises(
        (StitchRuntimeError, torch._dynamo.exc.Unsupported),
        match="LlamaForCausalLM with serving KV caches: position_ids=None",
    ):
        compiled(input_ids=torch.zeros(2, 1, dtype=torch.long))


def test_caches_that_do_not_fit_the_heads_are_refused() -> None:
    model = build_serving_llama(**SHAPE)
    module = attention_modules(model)[0][1]
    module.register_buffer(K_CACHE, torch.zeros(16, 32, 4, 16), persistent=False)
    with pytest.raises(
        StitchRuntimeError,
        match=r"key \(2, 1, 16\) .* do not fit caches of 4 key/value heads of 16",
    ):
        model(**serving_inputs(model, 2))


def test_only_the_stitch_attention_takes_caches() -> None:
    sdpa = build_model("llama")
    with pytest.raises(StitchConfigError, match="attn_implementation='sdpa'"):
        attach_kv_caches(sdpa, max_seqs=2, max_len=8)


# -- compiled, CUDA graphs emulated ------------------------------------------------------
def _marked(inputs: dict[str, Any]) -> dict[str, Any]:
    for name in ("input_ids", "position_ids"):
        torch._dynamo.mark_dynamic(inputs[name], 0)
    return inputs


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize(
    ("fields", "graphs"),
    [
        ({"cudagraph_mode": "PIECEWISE"}, PIECES * len(SIZES)),
        ({"cudagraph_mode": "FULL"}, len(SIZES)),
        (
            {"cudagraph_mode": "FULL_AND_PIECEWISE", "max_full_cudagraph_size": 2},
            2 + PIECES * 2,
        ),
    ],
    ids=["piecewise", "full", "full_and_piecewise"],
)
def test_compiled_with_emulated_graphs_matches_eager(
    fields: dict[str, Any], graphs: int, caplog: pytest.LogCaptureFixture
) -> None:
    config = CompilationConfig(
        backend="eager",
        disable_cache=True,
        cudagraph_capture_sizes=SIZES,
        cudagraph_pad_values=PAD_VALUES,
        **fields,
    )
    ops = EmulatedGraphOps()
    backend = StitchBackend(
        config, cudagraphs=CUDAGraphManager(config.cudagraphs, ops=ops)
    )
    served, eager = build_serving_llama(**SHAPE), build_serving_llama(**SHAPE)
    compiled = torch.compile(
        served, backend=backend, fullgraph=True, options=dict(NO_GUARDS)
    )
    with caplog.at_level(logging.WARNING, logger="stitch"), torch.inference_mode():
        # Start-up as a server (and bench/gpu_serving.py): capture every size,
        # forbid captures from then on, start from empty caches.
        before = compilation_counter.num_cudagraph_captured
        backend.cudagraphs.capture_sizes(
            lambda n: compiled(**_marked(serving_inputs(served, n, seed=100 + n)))
        )
        assert compilation_counter.num_cudagraph_captured - before == graphs
        backend.cudagraphs.forbid_capture()
        reset_kv_caches(served)
        for step, n in enumerate(CALLS):
            inputs = serving_inputs(served, n, seed=step)
            expected = eager(**inputs).logits
            got = compiled(**_marked(inputs)).logits.clone()
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not caplog.text, caplog.text  # no "running without CUDA graphs"
    assert len(backend.compiled) == 1
    (runner,) = backend.cudagraphs.runners
    plan = runner.plan
    assert [(d.name, d.pad, d.rest) for d in plan.dynamic] == [
        ("input_ids", 0, (1,)),
        ("position_ids", -1, (1,)),
    ]
    assert plan.slice_outputs == (True,)
    assert len(ops.graphs) == graphs and all(g.replays for g in ops.graphs)
    # Padded rows wrote nothing: every cache as eager's, entry for entry.
    for got, expected in zip(kv_caches(served), kv_caches(eager), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
def test_padding_without_the_pad_value_corrupts_the_caches() -> None:
    """The -1 pad value is what keeps padded rows out of the caches."""
    config = CompilationConfig(
        backend="eager", disable_cache=True, cudagraph_capture_sizes=SIZES
    )
    backend = StitchBackend(
        config, cudagraphs=CUDAGraphManager(config.cudagraphs, ops=EmulatedGraphOps())
    )
    served, eager = build_serving_llama(**SHAPE), build_serving_llama(**SHAPE)
    compiled = torch.compile(
        served, backend=backend, fullgraph=True, options=dict(NO_GUARDS)
    )
    inputs = serving_inputs(served, 3)  # padded to 4: a row for slot 3
    with torch.inference_mode(), compilation_counter.expect(num_backend_compilations=1):
        eager(**inputs)
        compiled(**_marked(inputs))
    for got, expected in zip(kv_caches(served), kv_caches(eager), strict=True):
        assert not expected[3].any() and got[3].any()
        torch.testing.assert_close(got[:3], expected[:3], rtol=1e-4, atol=1e-5)


def test_the_saved_forward_loads_every_piece_prebuilt(tmp_path: Any) -> None:
    """``aot_compile`` of the token layout, with the token count of
    ``input_ids`` and ``position_ids`` named as one size: the model compares
    the two (NOTE: [one size for dims of one name]), so two unrelated sizes
    failed its trace and nothing was saved.  A later load runs every piece
    prebuilt, though each hands ``stitch::attention`` a view of its
    ``position_ids`` (NOTE: [a piece's output that views its input]); a call
    whose two token counts differ is refused by name."""
    from stitch.core.errors import StitchArgumentError, StitchInputError
    from stitch.runtime import aot_compile

    model = build_serving_llama(**SHAPE)
    config = CompilationConfig(cache_dir=str(tmp_path), cudagraph_pad_values=PAD_VALUES)
    tokens = {"input_ids": {0: "tokens"}, "position_ids": {0: "tokens"}}
    example = serving_inputs(model, 8)
    before = compilation_counter.snapshot()
    with torch.inference_mode():
        cold = aot_compile(
            model, (), config, example_kwargs=example, dynamic_dims=tokens
        )
        assert cold.path is not None, "the forward was not saved"
        warm = aot_compile(
            model, (), config, example_kwargs=example, dynamic_dims=tokens
        )
    after = compilation_counter.snapshot()
    assert warm.warm is True
    assert after["num_prebuilt_loads"] - before["num_prebuilt_loads"] == PIECES
    profiled, dynamo_code = dynamo_calls(lambda **kw: warm(**kw, use_cache=False))
    decode, expected = Decode(SHAPE["vocab_size"]), Decode(SHAPE["vocab_size"])
    decode.run(profiled, CALLS)
    reset_kv_caches(model)
    expected.run(model, CALLS)
    for slot, logits in expected.logits.items():
        torch.testing.assert_close(
            torch.stack(decode.logits[slot]), torch.stack(logits), rtol=1e-4, atol=1e-4
        )
    # A serving step runs the saved bytecode and its pieces: no guard of Dynamo,
    # only the torch._dynamo.utils helpers the bytecode replays (an attribute
    # set on the model's output).
    ran = {f.split(":")[0].rsplit("/", 1)[-1] for f in dynamo_code}
    assert ran <= {"utils.py"}, sorted(dynamo_code)
    # Compiled for use_cache=False: a call without it is refused by name (the
    # model's default would be the config's use_cache).
    missing = serving_inputs(model, 3)
    del missing["use_cache"]
    with pytest.raises(
        StitchArgumentError,
        match=r"LlamaForCausalLM.forward \(saved by aot_compile\) takes \(\*, "
        r"input_ids, position_ids, use_cache\), .*: missing 1 required "
        r"keyword-only argument: 'use_cache'",
    ):
        warm(**missing)
    bad = serving_inputs(model, 5)
    bad["position_ids"] = bad["position_ids"][:3]
    with pytest.raises(
        StitchInputError, match=r"position_ids: expected shape\[0\] == input_ids"
    ):
        warm(**bad)
    with pytest.raises(
        StitchRuntimeError,
        match="'tokens' names input_ids dim 0 .size 5. and position_ids dim 0 .size 3.",
    ):
        aot_compile(model, (), config, example_kwargs=bad, dynamic_dims=tokens)


@pytest.mark.parametrize(
    ("returned", "kind", "says"),
    [
        ("reinterpret_tensor(arg1_1, (u0, ), (1, ), 0), buf2", "alias_of_input", ""),
        ("arg1_1, buf2", "is_input", ""),
        ("buf0, buf2", "alias_of_input", "not returned as arg1_1"),
        (
            "reinterpret_tensor(arg0_1, (u0, ), (1, ), 0), buf2",
            "alias_of_input",
            "arg1_1",
        ),
        ("buf0, buf2", "alias_of_intermediate", "aliases an intermediate"),
        ("buf0", "alias_of_input", "return cannot be read"),
    ],
)
def test_only_outputs_returned_as_views_of_their_input_run_prebuilt(
    returned: str, kind: str, says: str
) -> None:
    """NOTE: [a piece's output that views its input]: output 0 aliases input 1."""
    from stitch.runtime.pipeline.prebuilt.save import input_views_unshown

    source = (
        f"def call(self, args):\n    arg0_1, arg1_1 = args\n    return ({returned}, )\n"
    )
    outputs = [
        types.SimpleNamespace(output_type=types.SimpleNamespace(name=kind), base_idx=1),
        types.SimpleNamespace(output_type=types.SimpleNamespace(name="non_alias")),
    ]
    why = input_views_unshown(outputs, source)
    assert (says in "; ".join(why)) and (bool(why) == bool(says))
