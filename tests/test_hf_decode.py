"""Guard-free decode: a transformers model's saved forward, called by keyword with a static cache.

``aot_compile(model, example_kwargs={"input_ids": ..., "past_key_values":
StaticCache, "use_cache": True})`` saves the forward; its input check names
the keyword arguments and checks the cache's tensors (which the forward writes
in place).  The prefill (a prompt of one length) and a decode step (one token)
are two signatures: transformers' mask code branches on the query length, so
the token count cannot be an unbacked size (``dynamic_dims`` fails the trace),
and a backed one would need guards the saved forward does not run; each
prompt length is one more signature, compiled once.

Fresh processes (``hf_decode_worker.py``) decode through the saved forward:
a cold one compiles both signatures and saves them; a warm one, with
Inductor's cache empty, loads them (no Stitch or Inductor compile), and no
function of ``torch._dynamo`` runs during the steps (transformers imports
Dynamo itself, so the module being imported proves nothing).  Both give
exactly eager's tokens.  The in-process cases use eager pieces (nothing is
saved; the check and its slow path are the same).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers.utils import ModelOutput  # noqa: E402

from stitch.core.errors import StitchInputError, StitchRuntimeError  # noqa: E402
from stitch.runtime import CompilationConfig, aot_compile  # noqa: E402
from stitch.runtime.examples import LlamaConfig, build_llama  # noqa: E402
from stitch.runtime.harness.hf_decode import greedy_decode, static_cache  # noqa: E402
from stitch.runtime.hf import build_model  # noqa: E402
from stitch.runtime.saved.input_signature import SizedGuards  # noqa: E402

import backend_support  # noqa: E402
from backend_support import INDUCTOR_TOL  # noqa: E402

WORKER = Path(__file__).with_name("hf_decode_worker.py")
SHAPE = {"batch": 2, "prompt": 6, "new_tokens": 8}

# See NOTE: [many compiles of one forward] in conftest.py.
pytestmark = pytest.mark.usefixtures("dynamo_state")


def run_worker(
    spec: dict[str, Any], inductor_dir: Path | None = None
) -> dict[str, Any]:
    env = {} if inductor_dir is None else {"TORCHINDUCTOR_CACHE_DIR": str(inductor_dir)}
    return backend_support.run_worker(spec, 600, env, worker=WORKER)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("hf_decode")
    spec = {**SHAPE, "cache_dir": str(tmp / "cache")}
    cold = run_worker(spec)
    empty = tmp / "inductor-empty"
    warm = run_worker(spec, empty)
    return {"cold": cold, "warm": warm, "empty": empty}


@pytest.mark.slow
def test_cold_process_compiles_the_prefill_and_the_decode_step(
    runs: dict[str, Any],
) -> None:
    cold = runs["cold"]
    assert cold["warm"] is False and cold["path"]
    assert cold["tokens"] == cold["eager"]
    # Compiling traced with fake tensors: the example cache was not written.
    assert cold["cache_untouched_by_compile"]
    # The prompt's signature, then the decode step's, compiled on its first call.
    assert cold["counter"]["num_backend_compilations"] == 2
    (warning,) = cold["warnings"]
    assert "input_ids: expected shape[1] == 6, got 1" in warning
    assert cold["plain_function"]


@pytest.mark.slow
def test_warm_process_decodes_without_compiling_or_dynamo(runs: dict[str, Any]) -> None:
    warm, cold = runs["warm"], runs["cold"]
    assert warm["warm"] is True and warm["warnings"] == []
    assert warm["tokens"] == cold["tokens"] == warm["eager"]
    counter = warm["counter"]
    assert counter.get("num_backend_compilations", 0) == 0
    assert counter.get("num_inductor_compiles", 0) == 0
    assert counter["num_prebuilt_loads"] > 0
    empty = runs["empty"]
    assert not empty.exists() or not any(empty.iterdir())
    # Dynamo compiled no frame, so it holds no guard to evaluate; of its Python
    # code only the helpers the saved bytecode calls (torch._dynamo.utils: an
    # attribute set the traced code replays) ran in the forward calls.
    assert not warm["dynamo_frames"].get("frames"), warm["dynamo_frames"]
    ran = {Path(f.split(":")[0]).name for f in warm["dynamo_code_per_step"]}
    assert ran <= {"utils.py"}, warm["dynamo_code_per_step"]
    assert warm["plain_function"]


@pytest.mark.slow
def test_the_saved_check_names_the_keywords_and_the_cache(runs: dict[str, Any]) -> None:
    check = (Path(runs["cold"]["path"]) / "input_check.py").read_text()
    assert "*,\n    input_ids,\n    past_key_values,\n    use_cache," in check
    assert "t0 = past_key_values.layers[0].keys" in check
    assert '"past_key_values.layers[1].cumulative_length", "int64"' in check
    assert 'type(past_key_values).__qualname__ == "StaticCache"' in check
    assert "past_key_values=past_key_values" in check


# -- in this process, eager pieces ----------------------------------------------------


class Eager:
    """The tiny Llama compiled for a 2 x 6 prompt by keyword, eager pieces."""

    def __init__(self) -> None:
        torch._dynamo.reset()
        self.model = build_model("llama", attn_implementation="stitch").eval()
        gen = torch.Generator().manual_seed(1)
        self.prompt = torch.randint(3, 512, (2, 6), generator=gen)
        cache = static_cache(self.model, 2, 12)
        config = CompilationConfig(backend="eager", disable_cache=True)
        example = {
            "input_ids": self.prompt,
            "past_key_values": cache,
            "use_cache": True,
        }
        with torch.no_grad():
            self.compiled = aot_compile(self.model, (), config, example_kwargs=example)


@pytest.fixture(scope="module")
def eager() -> Eager:
    return Eager()


@pytest.mark.slow
def test_a_cache_of_another_length_is_a_new_signature(eager: Eager) -> None:
    model = eager.model
    # 6 + 4 tokens: a cache of 10 where the example's held 12.
    got = greedy_decode(eager.compiled, model, eager.prompt, 4)
    assert torch.equal(got, greedy_decode(model, model, eager.prompt, 4))
    # The example's prompt (cache of 12); the prompt into 10; a step into 10.
    check = eager.compiled.forward.__func__.__globals__
    assert "SIGNATURE_2" in check and "SIGNATURE_3" not in check


@pytest.mark.slow
def test_a_cache_in_another_layout_is_written_in_place_not_copied(eager: Eager) -> None:
    model = eager.model
    cache = static_cache(model, 2, 12)
    layer = cache.layers[0]
    # The same sizes, another layout: the slow path must not copy it (the
    # forward writes into it), so it compiles for it and writes this tensor.
    layer.keys = torch.zeros(2, 12, 2, 16).transpose(1, 2)
    storage = layer.keys.untyped_storage().data_ptr()
    with torch.no_grad():
        out = eager.compiled(
            input_ids=eager.prompt, past_key_values=cache, use_cache=True
        )
        ref_cache = static_cache(model, 2, 12)
        ref = model(input_ids=eager.prompt, past_key_values=ref_cache, use_cache=True)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    assert layer.keys.untyped_storage().data_ptr() == storage
    assert int(layer.cumulative_length) == 6
    torch.testing.assert_close(layer.keys, ref_cache.layers[0].keys)


@pytest.mark.slow
def test_token_ids_out_of_range_are_refused(eager: Eager) -> None:
    cache = static_cache(eager.model, 2, 12)
    bad = eager.prompt.clone()
    bad[0, 0] = 512
    with pytest.raises(
        StitchInputError, match=r"input_ids: expected values in \[0, 512\)"
    ):
        eager.compiled(input_ids=bad, past_key_values=cache, use_cache=True)
    # Refused before a kernel ran: the cache was not written.
    assert int(cache.layers[0].cumulative_length) == 0


def test_keyword_arguments_and_dynamic_dims_by_name_are_checked() -> None:
    model = build_llama(LlamaConfig(num_layers=1))  # forward(input_ids, positions)
    ids = torch.zeros(3, dtype=torch.int64)
    config = CompilationConfig(backend="eager", disable_cache=True)
    with pytest.raises(StitchRuntimeError, match="takes no keyword argument 'ids'"):
        aot_compile(model, (), config, example_kwargs={"ids": ids})
    with pytest.raises(
        StitchRuntimeError, match="given both by position and by keyword"
    ):
        aot_compile(model, (ids,), config, example_kwargs={"input_ids": ids})
    with pytest.raises(StitchRuntimeError, match="dynamic_dims names 'positions'"):
        aot_compile(
            model,
            (),
            config,
            example_kwargs={"input_ids": ids},
            dynamic_dims={"positions": [1]},
        )


@pytest.mark.slow
def test_a_size_dynamo_made_dynamic_by_itself_is_checked_as_the_example() -> None:
    """NOTE: [a size Dynamo made dynamic by itself] (input_signature.py)."""
    torch._dynamo.reset()
    model = build_model("llama", attn_implementation="stitch").eval()
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 512, (1, n), generator=gen) for n in (5, 6)]
    # torch.compile of the same forward for two prompt lengths: Dynamo makes
    # the length dynamic for every later compile of that code in this process.
    seen = torch.compile(model, backend="eager")
    with torch.no_grad():
        for p in prompts:
            seen(
                input_ids=p, past_key_values=static_cache(model, 1, 12), use_cache=True
            )
        example = {
            "input_ids": prompts[1],
            "past_key_values": static_cache(model, 1, 12),
            "use_cache": True,
        }
        config = CompilationConfig(backend="eager", disable_cache=True)
        compiled = aot_compile(model, (), config, example_kwargs=example)
    check = compiled.forward.__func__.__globals__
    # Every size of the prompt's signature is static (no guard per token count).
    assert not isinstance(check["SIGNATURE_0"], SizedGuards)
    # A decode step (1 token) is not the prompt's signature: it compiles its own.
    got = greedy_decode(compiled, model, prompts[1], 6)
    assert torch.equal(got, greedy_decode(model, model, prompts[1], 6))
    assert "SIGNATURE_1" in check


def test_a_saved_forward_restrides_eager_outputs_in_a_new_process(
    tmp_path: Path,
) -> None:
    # NOTE: [piece inputs restrided to their compiled layout] (layouts.py):
    # Phi-3's query comes out of a fused qkv_proj, so CPU SDPA returns it in
    # another layout than its fake kernel says, and the next piece is compiled
    # for the fake's.  A process that loads the saved forward must restride it
    # as the compiling process did (the index records each piece's layouts);
    # without that, Inductor's stride assertion failed in the second process.
    spec = {"family": "phi3", "batch": 2, "prompt": 7}
    spec["cache_dir"] = str(tmp_path / "cache")
    cold = run_worker(spec)
    if not cold["saved"]:
        # torch 2.11's aot_compile refuses this model ("Missing required external
        # references"); Stitch runs it through torch.compile, with nothing saved.
        pytest.skip(f"torch {cold['torch']} cannot save Phi-3's forward")
    warm = run_worker(spec)
    assert (cold["warm"], warm["warm"]) == (False, True)
    assert cold["max_diff"] < 1e-4 and warm["max_diff"] < 1e-4, (cold, warm)


@dataclasses.dataclass
class HeadOutput(ModelOutput):
    logits: torch.Tensor | None = None


class Head(torch.nn.Module):
    """A forward that returns a ``ModelOutput``, as every transformers model's
    does (torch saves the forward's classes by name: they live here, not in
    the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> HeadOutput:
        return HeadOutput(logits=self.proj(x).relu())


def test_a_forward_returning_a_model_output_is_saved(tmp_path: Path) -> None:
    """Dynamo's bytecode rebuilds a ``ModelOutput`` through the builtin ``type``,
    which torch 2.11 left out of the globals it saves and then refused at once
    ("Missing required external references"): no transformers model's forward
    was saved, and every process traced it again (NOTE: [builtins the saved
    bytecode reads] in compat/dynamo.py)."""
    torch.manual_seed(0)
    model = Head().eval()
    x = torch.randn(4, 8)
    config = CompilationConfig(cache_dir=str(tmp_path))
    cold = aot_compile(model, (x,), config)
    assert cold.path is not None, "the forward was not saved"
    warm = aot_compile(model, (x,), config)
    assert warm.warm is True
    out = warm(x)
    assert type(out) is HeadOutput
    torch.testing.assert_close(out.logits, model(x).logits, **INDUCTOR_TOL)
