"""``stitch::paged_attention`` against transformers' own paged attention, and
transformers' continuous batching (``generate_batch``) compiled by Stitch."""

from __future__ import annotations

import itertools
import types

import pytest
import torch
from engine_support import skip_without_the_engine

skip_without_the_engine()

from transformers import LlamaConfig, Qwen2Config  # noqa: E402
from transformers.generation.continuous_batching.cache import (  # noqa: E402
    PagedAttentionCache,
)
from transformers.generation.continuous_batching.distributed import (  # noqa: E402
    DistributedHelper,
)
from transformers.generation.continuous_batching.requests import (  # noqa: E402
    RequestState,
)
from transformers.generation.continuous_batching.utils import (  # noqa: E402
    build_attention_mask,
)
from transformers.integrations.sdpa_attention import (  # noqa: E402
    sdpa_attention_forward,
)

from stitch.core.errors import StitchConfigError, StitchRuntimeError  # noqa: E402
from stitch.runtime.hf import engine, engine_compat  # noqa: E402
from stitch.runtime.hf.engine_compat import config_fields  # noqa: E402
from stitch.runtime.hf.tiny_models import tiny_config  # noqa: E402
from stitch.runtime.kernels.paged_attention import PAGED_ATTENTION_OP  # noqa: E402

HEADS, KV_HEADS, DIM = 4, 2, 8


def _config(sliding: bool = False):
    fields = dict(
        vocab_size=64,
        hidden_size=HEADS * DIM,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=64,
    )
    if sliding:
        # Layer 0 slides over 3 tokens, layer 1 attends to everything.
        return Qwen2Config(
            **fields,
            use_sliding_window=True,
            sliding_window=3,
            max_window_layers=0,
            layer_types=["sliding_attention", "full_attention"],
        )
    return LlamaConfig(**fields)


def _cache(config) -> PagedAttentionCache:
    from transformers import ContinuousBatchingConfig

    if engine_compat.version() < (5, 23):
        pytest.skip(
            "builds the engine's batches through 5.23's cache API; the "
            "generate_batch tests cover 5.17"
        )

    cb = ContinuousBatchingConfig(
        page_size=4,
        num_blocks=16,
        max_batch_tokens=32,
        max_blocks_per_request=0,
        max_memory_percent=0.5,
    )
    cache = PagedAttentionCache(
        config, cb, "cpu", DistributedHelper(None, None), dtype=torch.float32
    )
    # Random contents everywhere: the cached prefixes, and rows nobody may touch.
    cache.cache_tensor.view(torch.float32).copy_(
        torch.randn(
            cache.cache_tensor.numel() // 4, generator=torch.Generator().manual_seed(1)
        )
    )
    return cache


class _Attention(torch.nn.Module):
    """What transformers' attention functions read of their module."""

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_key_value_groups = HEADS // KV_HEADS
        self.is_causal = True


def _batch(cache: PagedAttentionCache, requests: list[tuple[int, int]], pad: int = 0):
    """The engine's kwargs for ``requests`` (``(past, new)`` tokens each), as
    ``ContinuousBatchingIOs.prepare_batch_tensors`` builds them; ``pad`` extra
    query tokens as the engine pads under compile."""
    allocators = list(cache.cache_allocators.values())
    reads = [[] for _ in allocators]
    writes = [[] for _ in allocators]
    cu_q = [0]
    cu_k = {a.layer_type: [0] for a in allocators}
    for i, (past, new) in enumerate(requests):
        state = RequestState(request_id=f"r{i}", initial_tokens=[1] * (past + new))
        assert cache.can_store_request_tokens(state, past + new)
        cache.extend_read_and_write_indices(state.request_id, past, new, reads, writes)
        cu_q.append(cu_q[-1] + new)
        for a in allocators:
            cu_k[a.layer_type].append(
                cu_k[a.layer_type][-1] + a.get_seqlen_k(past, new)
            )
    has_reads = any(past for past, _ in requests)
    tokens = cu_q[-1] + pad
    masks = {}
    for a in allocators:
        n_k = cu_k[a.layer_type][-1]
        mask = torch.empty(1, 1, tokens, n_k + pad if has_reads else tokens)
        mask.fill_(torch.finfo(torch.float32).min)
        window = a.sliding_window if a.layer_type == "sliding_attention" else 1
        build_attention_mask(mask, cu_q, cu_k[a.layer_type], sliding_window=window)
        masks[a.layer_type] = mask
    index = lambda rows, n: torch.tensor(
        rows + [0] * n, dtype=torch.int64
    )  # noqa: E731
    return dict(
        # Padding sequences have no tokens (the boundaries plateau).
        cu_seq_lens_q=torch.tensor(cu_q + [cu_q[-1]] * pad, dtype=torch.int32),
        cu_seq_lens_k={
            k: torch.tensor(v + [v[-1]] * pad, dtype=torch.int32)
            for k, v in cu_k.items()
        },
        max_length_k={
            k: max(b - a for a, b in itertools.pairwise(v)) for k, v in cu_k.items()
        },
        read_index=[index(r, pad) if has_reads else index([], 0) for r in reads],
        write_index=[index(w, pad) for w in writes],
        masks=masks,
        tokens=tokens,
        real=cu_q[-1],
    )


def _kwargs(batch, cache, keyword=engine_compat.PAGED_CACHE):
    """The attention function's keywords, the cache under ``keyword``: Stitch's
    (what its saved forward passes) or the engine's ``cache``."""
    return {
        keyword: cache,
        **_batch_kwargs(batch),
    }


def _batch_kwargs(batch):
    return dict(
        cu_seq_lens_q=batch["cu_seq_lens_q"],
        cu_seq_lens_k=dict(batch["cu_seq_lens_k"]),
        max_length_k=dict(batch["max_length_k"]),
        read_index=list(batch["read_index"]),
        write_index=list(batch["write_index"]),
    )


def _transformers_paged(module, q, k, v, mask, batch, cache):
    """transformers' own paged SDPA attention, the cache written as its version
    writes it: by the attention module before the function (5.24), or by the
    function (5.23) (NOTE: [transformers' engine across versions])."""
    kwargs = _batch_kwargs(batch)
    if engine_compat.version() >= (5, 24):
        k, v = cache.update(k, v, module.layer_idx, kwargs=kwargs)
    else:
        kwargs["cache"] = cache
    return sdpa_attention_forward(module, q, k, v, mask, scaling=0.3, **kwargs)


def _compare(requests, sliding=False, pad=0):
    torch.manual_seed(0)
    config = _config(sliding)
    cache = _cache(config)
    batch = _batch(cache, requests, pad)
    tokens = batch["tokens"]
    for layer in range(config.num_hidden_layers):
        module = _Attention(layer)
        layer_type = cache.layer_to_allocator[layer].layer_type
        q = torch.randn(1, HEADS, tokens, DIM)
        k = torch.randn(1, KV_HEADS, tokens, DIM)
        v = torch.randn(1, KV_HEADS, tokens, DIM)
        before = cache.cache_tensor.clone()
        expected, _ = _transformers_paged(
            module, q, k, v, batch["masks"][layer_type], batch, cache
        )
        written_by_transformers = cache.cache_tensor.clone()
        cache.cache_tensor.copy_(before)
        got, _ = engine.paged_attention_forward(
            module,
            q,
            k,
            v,
            batch["masks"][layer_type],
            scaling=0.3,
            **_kwargs(batch, cache),
        )
        real = batch["real"]
        torch.testing.assert_close(
            got[:, :real], expected[:, :real], rtol=1e-5, atol=1e-5
        )
        assert torch.equal(got[:, real:], torch.zeros_like(got[:, real:]))
        assert torch.equal(cache.cache_tensor, written_by_transformers)
        # Written at the write rows, nowhere else: the cache equals the one
        # before with only the new keys and values copied into those rows.
        written = cache.cache_tensor.clone()
        cache.cache_tensor.copy_(before)
        allocator = cache.layer_to_allocator[layer]
        rows = batch["write_index"][allocator.index]
        k_view, v_view = allocator._kv_token_views[layer]
        k_view.index_copy_(0, rows, k[0].transpose(0, 1))
        v_view.index_copy_(0, rows, v[0].transpose(0, 1))
        assert torch.equal(written, cache.cache_tensor)
        assert not torch.equal(written, before)


@pytest.mark.parametrize("sliding", [False, True], ids=["full", "sliding"])
def test_paged_prefill_matches_transformers(sliding):
    _compare([(0, 5), (0, 3), (0, 7)], sliding=sliding)


@pytest.mark.parametrize("sliding", [False, True], ids=["full", "sliding"])
def test_paged_decode_matches_transformers(sliding):
    _compare([(5, 1), (9, 1), (2, 1)], sliding=sliding)


@pytest.mark.parametrize("sliding", [False, True], ids=["full", "sliding"])
def test_paged_mixed_matches_transformers(sliding):
    # A first prefill chunk, a later chunk over a cached prefix, two decodes.
    _compare([(0, 4), (6, 3), (7, 1), (1, 1)], sliding=sliding)


def test_paged_padded_batch_matches_transformers():
    _compare([(0, 4), (6, 3), (7, 1)], pad=3)


def test_paged_refuses_block_tables_and_unknown_arguments():
    config = _config()
    cache = _cache(config)
    batch = _batch(cache, [(0, 2)])
    q, k = torch.randn(1, HEADS, 2, DIM), torch.randn(1, KV_HEADS, 2, DIM)
    call = dict(_kwargs(batch, cache), scaling=0.3)
    with pytest.raises(StitchRuntimeError, match="block_table="):
        engine.paged_attention_forward(
            _Attention(0), q, k, k, None, block_table=torch.zeros(1, 2), **call
        )
    with pytest.raises(StitchRuntimeError, match="argument frobnicate=3"):
        engine.paged_attention_forward(
            _Attention(0), q, k, k, None, frobnicate=3, **call
        )


def test_the_saved_forward_takes_the_engine_keywords_marked_input():
    """ENGINE_KEYWORDS (one table for the paged attention and the saved forward)
    and PagedStep's parameters name the same inputs."""
    import inspect

    from stitch.runtime.hf.saved_step import PagedStep

    marked = {
        name
        for name, keyword in engine_compat.ENGINE_KEYWORDS.items()
        if keyword.saved_forward == "input"
    }
    taken = set(inspect.signature(PagedStep.forward).parameters) - {"self"}
    assert marked == taken
    kinds = {k.saved_forward for k in engine_compat.ENGINE_KEYWORDS.values()}
    assert kinds == {"input", "dropped", "refused"}


# -- the tested transformers range ---------------------------------------------


def test_a_release_outside_the_tested_range_warns_once_naming_it(caplog):
    """NOTE: [the tested transformers range]: the version comes in through
    check_tested's argument, or engine_compat.installed_version (the seam
    continuous_batching_config reads)."""
    import logging

    engine_compat.check_tested.cache_clear()
    low, high = engine_compat.TESTED
    newest = f"{high[0]}.{high[1]}.0"
    untested = f"{high[0]}.{high[1] + 1}.0"
    with caplog.at_level(logging.WARNING, logger="stitch"):
        assert engine_compat.check_tested(newest)
        assert engine_compat.check_tested(f"{low[0]}.{low[1]}.0")
        assert caplog.records == []
        assert not engine_compat.check_tested(untested)
        assert not engine_compat.check_tested(untested)  # once
        assert not engine_compat.check_tested(f"{low[0]}.{low[1] - 1}.2")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert f"transformers {untested} is outside" in messages[0]
    assert f"({low[0]}.{low[1]} to {high[0]}.{high[1]})" in messages[0]
    engine_compat.check_tested.cache_clear()


def test_configuring_the_engine_under_an_untested_release_warns(monkeypatch, caplog):
    import logging

    from stitch.runtime import StitchBackend

    engine_compat.check_tested.cache_clear()
    monkeypatch.setattr(engine_compat, "installed_version", lambda: "5.99.1")
    with caplog.at_level(logging.WARNING, logger="stitch"):
        engine.continuous_batching_config(_llama(), StitchBackend(), **_ENGINE)
        engine.continuous_batching_config(_llama(), StitchBackend(), **_ENGINE)
    warned = [r.getMessage() for r in caplog.records if "5.99.1" in r.getMessage()]
    assert len(warned) == 1 and "tested with (5.17 to 5.24)" in warned[0]
    engine_compat.check_tested.cache_clear()


def test_an_engine_forward_that_fails_to_compile_names_the_untested_release(
    monkeypatch,
):
    """Under a release outside the range, the compile's own error (Dynamo's
    "Skip inlining ..." where 5.24 moved the cache update) becomes one that
    names the release and the range; inside it, the error passes unchanged."""
    from stitch.runtime import StitchBackend
    from stitch.runtime.hf import saved_step

    def skip_inlining(*args, **kwargs):
        raise torch._dynamo.exc.Unsupported(
            "Skip inlining `torch.compiler.disable()`d function"
        )

    monkeypatch.setattr(saved_step, "_aot_compile", skip_inlining)
    model = _llama()
    engine.continuous_batching_config(model, StitchBackend(), **_ENGINE)
    inputs = {
        "logits_to_keep": None,
        "attention_mask": torch.zeros(1, 1, 2, 2),
        "cu_seq_lens_k": torch.tensor([0, 2], dtype=torch.int32),
        "read_index": [torch.zeros(2, dtype=torch.int64)],
        "write_index": [torch.zeros(2, dtype=torch.int64)],
    }
    forward = model.forward

    def compile_now() -> None:
        forward.tracing["layout"] = forward.load_or_compile(inputs, "layout")
        forward.finished("layout")

    with pytest.raises(torch._dynamo.exc.Unsupported, match="Skip inlining"):
        compile_now()
    assert not forward.tracing  # the next step compiles again
    monkeypatch.setattr(engine_compat, "installed_version", lambda: "5.99.1")
    with pytest.raises(
        StitchConfigError,
        match=r"transformers 5\.99\.1 is outside the range Stitch's engine route is "
        r"tested with \(5\.17 to 5\.24\), and the engine's forward could not be "
        r"compiled under it \(Unsupported: Skip inlining",
    ):
        compile_now()


def test_the_hf_extra_allows_the_tested_range_alone():
    """pyproject.toml's hf extra, the test extra's pin and CI's releases agree
    with engine_compat.TESTED (NOTE: [the tested transformers range])."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    low, high = engine_compat.TESTED
    low_s, high_s = f"{low[0]}.{low[1]}", f"{high[0]}.{high[1]}"
    hf = re.search(r"^hf = \[(.*)\]$", pyproject, re.M).group(1)
    assert f'"transformers>={low_s},<={high_s}.0"' in hf, hf
    assert f'"transformers=={high_s}.0",' in pyproject
    ci = (root / ".ci" / "torch_versions.sh").read_text()
    pairs = re.findall(r'^    "(\d+\.\d+\.\d+) (\d+\.\d+)\.\d+"$', ci, re.M)
    assert [t for _, t in pairs] == [low_s, high_s], pairs


# -- routing: only the engine's calls of an opted-in model change ----------------


def _llama(seed: int = 0, **fields):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = tiny_config("llama", vocab_size=128, **fields)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa").eval()


def test_routing_leaves_plain_calls_and_other_models_alone():
    from transformers import AttentionInterface

    routed, other = _llama(), _llama()
    ids = torch.randint(3, 128, (2, 7))
    with torch.no_grad():
        before = routed(ids).logits
    assert engine.route_paged_attention(routed) == 2
    # The name the engine calls: "sdpa" (5.23), "paged|sdpa" (5.17).
    name = engine_compat.engine_attention_name()
    sdpa = AttentionInterface._global_mapping[name]
    assert getattr(sdpa, "__wrapped__", None) is not None
    # ... and "paged|eager", the engine's name for a model built with "eager".
    from transformers.integrations.eager_paged import eager_paged_attention_forward

    paged_eager = AttentionInterface._global_mapping["paged|eager"]
    assert paged_eager.__wrapped__ is eager_paged_attention_forward
    engine.install()  # idempotent: wrapped once
    assert AttentionInterface._global_mapping[name] is sdpa
    assert AttentionInterface._global_mapping["paged|eager"] is paged_eager
    calls = []
    original = sdpa.__wrapped__
    forward = engine.paged_attention_forward
    engine.paged_attention_forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    try:
        with torch.no_grad():
            # A plain forward of the routed model, and the other model: SDPA's.
            torch.testing.assert_close(routed(ids).logits, before, rtol=0, atol=0)
            torch.testing.assert_close(other(ids).logits, before, rtol=0, atol=0)
        assert calls == []
        # A paged call of the model not opted in goes to transformers too,
        # even with the cache under Stitch's keyword.
        cache = _cache(_config())
        batch = _batch(cache, [(0, 3)])
        q, k = torch.randn(1, HEADS, 3, DIM), torch.randn(1, KV_HEADS, 3, DIM)
        module = other.model.layers[0].self_attn
        got, _ = sdpa(
            module,
            q,
            k,
            k,
            batch["masks"]["full_attention"],
            scaling=0.3,
            **_kwargs(batch, cache),
        )
        assert calls == []
        cache.cache_tensor.zero_()
        expected, _ = original(
            module,
            q,
            k,
            k,
            batch["masks"]["full_attention"],
            scaling=0.3,
            **_kwargs(batch, cache),
        )
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        # The routed model's call with the engine's own cache= keyword (not
        # Stitch's saved forward) goes to transformers ...
        sdpa(
            routed.model.layers[0].self_attn,
            q,
            k,
            k,
            batch["masks"]["full_attention"],
            scaling=0.3,
            **_kwargs(batch, cache, keyword="cache"),
        )
        assert calls == []
        # ... and its call with Stitch's keyword goes to Stitch's op.
        sdpa(
            routed.model.layers[0].self_attn,
            q,
            k,
            k,
            None,
            scaling=0.3,
            **_kwargs(batch, cache),
        )
        assert calls == [1]
    finally:
        engine.paged_attention_forward = forward


def test_engine_forward_leaves_the_models_other_uses_alone():
    """continuous_batching_config gives the model a forward of its own: plain
    calls, a saved and loaded model, and a copy behave as before."""
    import copy
    import io

    from stitch.runtime import StitchBackend
    from stitch.runtime.hf.saved_step import EngineForward

    model = _llama()
    ids = torch.randint(3, 128, (2, 7))
    with torch.no_grad():
        before = model(ids).logits
        engine.continuous_batching_config(model, StitchBackend(), **_ENGINE)
        assert isinstance(model.__dict__["forward"], EngineForward)
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)
        # torch.save pickles the model: the loaded one has its class's forward.
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert not isinstance(loaded.forward, EngineForward)
        torch.testing.assert_close(loaded(ids).logits, before, rtol=0, atol=0)
        # A copy gets an engine forward of its own, bound to the copy.
        twin = copy.deepcopy(model)
        assert twin.forward is not model.forward and twin.forward.model is twin
        torch.testing.assert_close(twin(ids).logits, before, rtol=0, atol=0)
    assert model.forward.steps == {}  # nothing compiled: no engine ran


def test_routing_refuses_other_implementations_and_backends_without_the_op():
    from transformers import LlamaForCausalLM

    from stitch.runtime import CompilationConfig, StitchBackend

    flex = LlamaForCausalLM._from_config(
        _llama().config, attn_implementation="flex_attention"
    )
    with pytest.raises(StitchConfigError, match="attn_implementation='flex_attention'"):
        engine.route_paged_attention(flex)
    # Bloom attends in its own code (alibi): no attention name reaches it.
    from transformers import BloomConfig, BloomForCausalLM

    bloom = BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=32, n_layer=1))
    with pytest.raises(
        StitchConfigError,
        match=r"BloomForCausalLM: _supports_attention_backend=False, its attention "
        r"\(BloomAttention\)",
    ):
        engine.route_paged_attention(bloom)
    with pytest.raises(StitchConfigError, match="lacks 'stitch::paged_attention'"):
        engine.continuous_batching_config(
            _llama(),
            StitchBackend(CompilationConfig(splitting_ops=["stitch::hf_attention"])),
        )


# -- the engine: generate_batch compiled by Stitch --------------------------------


def _prompts_and_generation():
    """The prompts every engine test generates from, and its greedy config."""
    from transformers import GenerationConfig

    generator = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(3, 128, (n,), generator=generator).tolist() for n in (5, 17, 9, 2)
    ]
    generation = GenerationConfig(
        max_new_tokens=8, do_sample=False, eos_token_id=-1, pad_token_id=0
    )
    return prompts, generation


def _generate(model, config):
    prompts, generation = _prompts_and_generation()
    outputs = model.generate_batch(
        prompts, generation, continuous_batching_config=config
    )
    errors = [o.error for o in outputs.values()]
    assert errors == [None] * len(prompts), errors[0] if errors else "no output"
    return [(o.generated_tokens, o.logprobs) for o in outputs.values()]


# Small pages and batches, so prompts are prefilled in chunks next to decodes.
_ENGINE = dict(
    num_blocks=32,
    max_batch_tokens=16,
    page_size=16,
    max_memory_percent=0.5,
    return_logprobs=True,
)


def _eager_config(fields, **extra):
    """transformers' own engine, eager, on the paged path Stitch's config also
    takes (no decode fast path, no switch to flash)."""
    from transformers import ContinuousBatchingConfig

    return ContinuousBatchingConfig(
        **config_fields(
            dict(fields, max_blocks_per_request=0, auto_switch_to_flash=False, **extra)
        )
    )


def _engine_matches_eager(model, tmp_path):
    return _engine_matches(model, tmp_path, _generate(model, _eager_config(_ENGINE)))


def _engine_matches(model, tmp_path, expected):
    """The engine through Stitch gives ``expected``'s tokens and log-probabilities,
    and its backend what it compiled and saved: every piece compiled in the
    backend call (``tiered_start=False``; the engine's default, a tiered start,
    is tests/test_tiered_default.py's)."""
    from stitch.runtime import CompilationConfig, StitchBackend

    backend = StitchBackend(
        CompilationConfig(
            splitting_ops=[PAGED_ATTENTION_OP],
            cache_dir=str(tmp_path),
            tiered_start=False,
        )
    )
    got = _generate(model, engine.continuous_batching_config(model, backend, **_ENGINE))
    for (tokens, logprobs), (want, want_logprobs) in zip(got, expected, strict=True):
        assert tokens == want and len(tokens) == 8
        torch.testing.assert_close(logprobs, want_logprobs, rtol=1e-4, atol=1e-4)
    # The user's backend compiled the model's call: one graph (every size
    # dynamic), split at the paged op of every layer, and saved it.
    assert len(backend.compiled) == 1
    reports = backend.compiled[0].reports
    layers = model.config.num_hidden_layers
    assert [r.module_path for r in reports if r.splitting] == [
        f"model.model.layers.{i}.self_attn" for i in range(layers)
    ]
    assert "stitch.paged_attention" in backend.compiled[0].code
    assert backend.compiled[0].warm is False
    [step] = model.forward.steps.values()
    assert step.warm is False and step.path is not None
    return got


def _generate_plainly(model):
    """``_generate``'s prompts through ``model.generate`` one at a time: the
    model's own attention over transformers' ordinary cache, no engine."""
    prompts, generation = _prompts_and_generation()
    results = []
    for prompt in prompts:
        out = model.generate(
            torch.tensor([prompt]),
            generation,
            output_logits=True,
            return_dict_in_generate=True,
        )
        tokens = out.sequences[0, len(prompt) :].tolist()
        logprobs = [
            torch.log_softmax(logits[0].float(), -1)[t].item()
            for logits, t in zip(out.logits, tokens, strict=True)
        ]
        results.append((tokens, logprobs))
    return results


@pytest.fixture(scope="module")
def llama_cold(tmp_path_factory):
    """The Llama through Stitch in this process: its cache folder and outputs."""
    cache = tmp_path_factory.mktemp("engine_cache")
    return cache, _engine_matches_eager(_llama(), cache)


def test_generate_batch_llama_through_stitch(llama_cold):
    cache, got = llama_cold
    assert list(cache.glob("*/rank_0/index.py"))


def test_generate_batch_mixtral_through_stitch(tmp_path):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=256,
        sliding_window=None,
    )
    model = MixtralForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    _engine_matches_eager(model, tmp_path)


def test_generate_batch_sliding_window_through_stitch(tmp_path):
    """A sliding layer beside a full one: two cache groups, keys per layer type."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    config = _config(sliding=True)
    config.vocab_size = 128
    model = Qwen2ForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    _engine_matches_eager(model, tmp_path)


# What each eager-only family's attention has that SDPA lacks, and how to take
# it away (the module attribute its attention passes on).
_EAGER_ONLY = {
    "gemma2": ("attn_logit_softcapping", None),  # softcap
    "gpt_oss": ("sinks", -1e9),  # sinks: a -1e9 logit is no sink
}


@pytest.mark.parametrize("name", sorted(_EAGER_ONLY))
def test_generate_batch_eager_only_families_through_stitch(tmp_path, name):
    """Gemma 2 (softcap) and GPT-OSS (sinks) have no SDPA in transformers, so
    the engine calls their attention "paged|eager"; through Stitch it reaches
    the op, which applies the feature (NOTE: [how the engine reaches the paged
    op]).  The reference is the model's own eager attention without the
    engine: transformers' "paged|eager" drops the softcap."""
    import copy

    from stitch.runtime.hf.tiny_models import build_model

    model = build_model(name, attn_implementation="eager")
    with torch.no_grad():
        # Scores of order one, so the softcap and the sinks change the tokens.
        for module in model.modules():
            if hasattr(module, "k_proj"):
                module.q_proj.weight.mul_(30.0)
                module.k_proj.weight.mul_(30.0)
    expected = _generate_plainly(model)
    attribute, without = _EAGER_ONLY[name]
    featureless = copy.deepcopy(model)
    for module in featureless.modules():
        if hasattr(module, attribute) and hasattr(module, "k_proj"):
            value = getattr(module, attribute)
            if isinstance(value, torch.Tensor):
                with torch.no_grad():
                    value.fill_(without)
            else:
                setattr(module, attribute, without)
    assert _generate_plainly(featureless) != expected  # the feature matters here
    _engine_matches(model, tmp_path, expected)
    assert model.config._attn_implementation == "eager"  # the engine restored it


# The child: the engine through Stitch with a given cache folder; prints the
# tokens and whether each graph started warm.
_CHILD = """
import json, sys, torch
sys.path.insert(0, sys.argv[2])
from test_hf_engine import _ENGINE, _generate, _llama
from stitch.runtime import CompilationConfig, StitchBackend
from stitch.runtime.hf import PAGED_ATTENTION_OP, continuous_batching_config
model = _llama()
backend = StitchBackend(
    CompilationConfig(
        splitting_ops=[PAGED_ATTENTION_OP], cache_dir=sys.argv[1], tiered_start=False
    )
)
out = _generate(model, continuous_batching_config(model, backend, **_ENGINE))
print(json.dumps({
    "out": out,
    "steps": [s.warm for s in model.forward.steps.values()],
    "compiled": len(backend.compiled),
    "traced": "torch._dynamo.convert_frame" in sys.modules
    and sum(torch._dynamo.utils.counters["stats"].values()),
}))
"""


def test_generate_batch_second_process_starts_warm(llama_cold):
    import json
    import os
    import subprocess
    import sys

    # A new process over the cache the cold run (this process) filled.
    cache, cold = llama_cold
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(cache), os.path.dirname(__file__)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    warm = json.loads(done.stdout.strip().splitlines()[-1])
    # The saved forward loaded: no Dynamo trace, no backend call.
    assert warm["steps"] == [True] and warm["compiled"] == 0 and not warm["traced"]
    assert [[tokens, logprobs] for tokens, logprobs in cold] == warm["out"]


def test_use_cuda_graph_goes_to_the_engine_and_must_be_a_flag():
    """NOTE: [the engine's CUDA graphs around Stitch's forward] (engine.py):
    on by default for a model on CUDA only, and never by default with a tiered
    start; a flag or transformers' (varlen, decode) pair."""
    from stitch.runtime import CompilationConfig, StitchBackend

    model = _llama()
    backend = StitchBackend(CompilationConfig(splitting_ops=[PAGED_ATTENTION_OP]))

    def graphs(**fields):
        return engine.continuous_batching_config(
            model, backend, num_blocks=8, **fields
        ).use_cuda_graph

    assert graphs() is False  # a model on the CPU
    on_cuda = types.SimpleNamespace(device=torch.device("cuda", 0))
    assert engine.default_graphs(on_cuda, backend.config) is True
    tiered = CompilationConfig(tiered_start=True)
    assert engine.default_graphs(on_cuda, tiered) is False
    assert graphs(use_cuda_graph=True) is True
    assert graphs(use_cuda_graph=(True, False)) is True
    for bad in ("yes", None, (True, 1)):
        with pytest.raises(
            StitchConfigError, match=r"use_cuda_graph=.* is not a bool or a"
        ):
            graphs(use_cuda_graph=bad)
    # The engine's graphs would keep a tiered start's uncompiled pieces.
    backend = StitchBackend(
        CompilationConfig(splitting_ops=[PAGED_ATTENTION_OP], tiered_start=True)
    )
    assert graphs() is False
    with pytest.raises(StitchConfigError, match=r"use_cuda_graph=True with a tiered"):
        graphs(use_cuda_graph=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("graphs", [False, True], ids=["pieces", "engine_graphs"])
def test_generate_batch_through_stitch_on_cuda(tmp_path, monkeypatch, graphs):
    """On CUDA, Stitch's pieces and the Triton paged kernel give the eager
    engine's tokens; with ``use_cuda_graph=True`` the engine captures its steps
    around the saved forward and replays them (NOTE: [the engine's CUDA graphs
    around Stitch's forward] in engine.py)."""
    from stitch.runtime import CompilationConfig, StitchBackend

    model = _llama().cuda()
    eager = _eager_config(_ENGINE, use_cuda_graph=False)
    expected = _generate(model, eager)
    replays = []
    replay = torch.cuda.CUDAGraph.replay

    def counted(graph):
        replays.append(graph)
        return replay(graph)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counted)
    backend = StitchBackend(
        CompilationConfig(splitting_ops=[PAGED_ATTENTION_OP], cache_dir=str(tmp_path))
    )
    config = engine.continuous_batching_config(
        model, backend, use_cuda_graph=graphs, **_ENGINE
    )
    got = _generate(model, config)
    for (tokens, logprobs), (want, want_logprobs) in zip(got, expected, strict=True):
        assert tokens == want and len(tokens) == 8
        torch.testing.assert_close(logprobs, want_logprobs, rtol=1e-3, atol=1e-3)
    assert len(backend.compiled) == 1
    assert "stitch.paged_attention" in backend.compiled[0].code
    # The engine's graphs replayed only when asked for.
    assert bool(replays) is graphs


# -- bad input: requests the cache cannot hold, indices outside it ----------------


def test_paged_op_refuses_rows_outside_the_cache():
    """On CPU the op names an index outside the cache and writes nothing
    (NOTE: [cache rows checked on CPU only] in kernels/paged_attention.py)."""
    config = _config()
    cache = _cache(config)
    batch = _batch(cache, [(3, 2)])
    q, k = torch.randn(1, HEADS, 2, DIM), torch.randn(1, KV_HEADS, 2, DIM)
    rows = cache.layer_to_allocator[0]._kv_token_views[0][0].shape[0]
    before = cache.cache_tensor.clone()
    for name, at, row in (("write_index", 1, rows), ("read_index", 2, -1)):
        call = dict(_kwargs(batch, cache), scaling=0.3)
        call[name] = [index.clone() for index in call[name]]
        call[name][0][at] = row
        with pytest.raises(
            StitchRuntimeError, match=rf"{name}\[{at}\]={row} is outside"
        ):
            engine.paged_attention_forward(_Attention(0), q, k, k, None, **call)
        assert torch.equal(cache.cache_tensor, before)


def _outputs(model, config, prompts, max_new_tokens=8):
    from transformers import GenerationConfig

    generation = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0
    )
    outputs = model.generate_batch(
        prompts, generation, continuous_batching_config=config
    )
    return [outputs[f"req_{i}"] for i in range(len(prompts))]


def test_generate_batch_refuses_what_the_cache_cannot_hold(tmp_path):
    """A prompt longer than the cache and a request whose tokens outgrow it each
    fail alone, naming their sizes; the others (one filling the whole cache, so
    the rest wait for blocks) get eager's tokens.

    Without Stitch, transformers 5.23 schedules both until the cache is full and
    then fails every request in flight with "No requests can be scheduled"
    (NOTE: [requests the paged cache can never hold] in admission.py).
    """
    from stitch.runtime import CompilationConfig, StitchBackend

    model = _llama()
    # 4 blocks of 16 tokens: 64 cached tokens; 8 new tokens store 7 more.
    fields = dict(_ENGINE, num_blocks=4)
    # 57 + 7 = 64 fits exactly; 58 + 7 = 65 does not; 100 never does.
    generator = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(3, 128, (n,), generator=generator).tolist()
        for n in (5, 57, 100, 9, 58, 17)
    ]
    good = [0, 1, 3, 5]
    eager = _eager_config(fields)
    expected = _outputs(model, eager, [prompts[i] for i in good])
    backend = StitchBackend(
        CompilationConfig(splitting_ops=[PAGED_ATTENTION_OP], cache_dir=str(tmp_path))
    )
    got = _outputs(
        model, engine.continuous_batching_config(model, backend, **fields), prompts
    )
    assert "'req_2': its prompt of 100 tokens does not fit" in got[2].error
    assert "at most 64 tokens of one request (num_blocks=4, page_size=16)" in (
        got[2].error
    )
    assert (
        "'req_4': its prompt of 58 tokens and max_new_tokens=8 need 65 cached "
        "tokens, but the paged cache holds at most 64 tokens" in got[4].error
    )
    assert "token 65 could never get a block" in got[4].error
    assert got[2].generated_tokens == [] and got[4].generated_tokens == []
    for i, want in zip(good, expected, strict=True):
        assert got[i].error is None and want.error is None
        assert got[i].generated_tokens == want.generated_tokens
        assert len(got[i].generated_tokens) == 8
        torch.testing.assert_close(got[i].logprobs, want.logprobs, rtol=1e-4, atol=1e-4)
    # One graph served every request, the refused ones among them (a tiered
    # start, the default, may still trace it: model.forward.steps waits).
    assert len(model.forward.steps) == 1
    assert len(backend.compiled) == 1
