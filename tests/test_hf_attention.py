"""The ``"stitch"`` attention takes every argument transformers passes, or refuses it by name.

NOTE: [every argument is taken or refused by name] in runtime/hf/attn_implementation.py.
The features SDPA lacks (attention sinks, logit softcapping, position
biases) are checked against transformers' own functions for them: GPT-OSS's
and Gemma 2's eager attention, and its SDPA path with a position bias.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.integrations.sdpa_attention import (
    sdpa_attention_forward,
)  # noqa: E402
from transformers.models.gemma2 import modeling_gemma2  # noqa: E402
from transformers.models.gpt_oss import modeling_gpt_oss  # noqa: E402
from transformers.utils.generic import TransformersKwargs  # noqa: E402

from stitch.core.errors import StitchRuntimeError  # noqa: E402
from stitch.runtime.hf.attn_implementation import (
    ARGUMENTS,
    stitch_attention_forward,
)  # noqa: E402

from hf_call_sites import attention_keywords  # noqa: E402

BATCH, HEADS, KV_HEADS, DIM = 2, 4, 2, 8


class Attention(torch.nn.Module):
    """What transformers' attention functions read of their module."""

    def __init__(self, sinks: torch.Tensor | None = None) -> None:
        super().__init__()
        self.layer_idx = 3
        self.is_causal = True
        self.num_key_value_groups = HEADS // KV_HEADS
        if sinks is not None:
            self.sinks = torch.nn.Parameter(sinks)


def qkv(q_len: int, kv_len: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(BATCH, HEADS, q_len, DIM, generator=gen),
        torch.randn(BATCH, KV_HEADS, kv_len, DIM, generator=gen),
        torch.randn(BATCH, KV_HEADS, kv_len, DIM, generator=gen),
    )


def causal_masks(q_len: int, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The boolean mask (SDPA's, Stitch's) and the additive one (eager's) of one case:
    causal, lower-right aligned, the first key of the second sequence padding."""
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)
    allowed = allowed.expand(BATCH, 1, q_len, kv_len).clone()
    allowed[1, :, :, 0] = False
    additive = torch.zeros(allowed.shape).masked_fill(
        ~allowed, torch.finfo(torch.float32).min
    )
    return allowed, additive


# -- every keyword transformers passes -----------------------------------------------


@pytest.mark.slow
def test_every_keyword_transformers_passes_is_known() -> None:
    """A keyword a future transformers passes fails here, not in a user's model."""
    root = Path(transformers.__file__).parent
    found = attention_keywords(root, set(TransformersKwargs.__annotations__))
    # the reading finds what the issue found by hand (else it reads nothing)
    assert "models/gpt_oss/modeling_gpt_oss.py" in found["s_aux"]
    assert "models/gemma2/modeling_gemma2.py" in found["softcap"]
    assert "models/gpt_oss/modeling_gpt_oss.py" in found["use_cache"]
    assert "models/bert/modeling_bert.py" in found["encoder_hidden_states"]
    unknown = {
        name: sorted(files)[:3]
        for name, files in found.items()
        if name not in ARGUMENTS
    }
    assert unknown == {}, (
        f"transformers {transformers.__version__} passes attention functions "
        f"keywords runtime/hf/attn_implementation.py does not know: {unknown}; implement or "
        "refuse each (ARGUMENTS)"
    )


def test_an_unknown_argument_is_refused_with_its_name_and_module() -> None:
    q, k, v = qkv(3, 3)
    with pytest.raises(
        StitchRuntimeError,
        match=r"Attention \(layer 3\): argument new_feature=0.5 is not implemented",
    ):
        stitch_attention_forward(Attention(), q, k, v, None, new_feature=0.5)
    # even when None: an argument nobody has read is never dropped
    with pytest.raises(StitchRuntimeError, match="argument new_feature=None"):
        stitch_attention_forward(Attention(), q, k, v, None, new_feature=None)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("output_attentions", True),
        ("cache", object()),
        ("indices", torch.zeros(1, dtype=torch.long)),
        ("block_indices", torch.zeros(1, dtype=torch.long)),
    ],
)
def test_features_the_op_lacks_are_refused_by_name(name: str, value: object) -> None:
    q, k, v = qkv(3, 3)
    with pytest.raises(
        StitchRuntimeError, match=rf"Attention \(layer 3\): {name}=.* is refused"
    ):
        stitch_attention_forward(Attention(), q, k, v, None, **{name: value})
    # unset, they are taken: what the model passes when it does not use them
    stitch_attention_forward(Attention(), q, k, v, None, **{name: None})


# -- what SDPA lacks, against transformers' own functions ------------------------------


@pytest.mark.parametrize(("q_len", "kv_len"), [(5, 5), (1, 6), (3, 7)])
def test_sinks_match_gpt_oss_eager_attention(q_len: int, kv_len: int) -> None:
    sinks = torch.randn(HEADS, generator=torch.Generator().manual_seed(1)) * 2
    module = Attention(sinks)
    q, k, v = qkv(q_len, kv_len)
    boolean, additive = causal_masks(q_len, kv_len)
    expected, _ = modeling_gpt_oss.eager_attention_forward(
        module, q, k, v, additive, scaling=0.3
    )
    got, _ = stitch_attention_forward(
        module, q, k, v, boolean, scaling=0.3, s_aux=module.sinks
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the sinks change the numbers: ignoring them is not within tolerance
    without, _ = stitch_attention_forward(module, q, k, v, boolean, scaling=0.3)
    assert (without - expected).abs().max() > 1e-2


@pytest.mark.parametrize(("q_len", "kv_len"), [(5, 5), (1, 6)])
@pytest.mark.parametrize("softcap", [0.5, 20.0])
def test_softcap_matches_gemma2_eager_attention(
    q_len: int, kv_len: int, softcap: float
) -> None:
    module = Attention()
    q, k, v = (t * 4 for t in qkv(q_len, kv_len))
    boolean, additive = causal_masks(q_len, kv_len)
    expected, _ = modeling_gemma2.eager_attention_forward(
        module, q, k, v, additive, scaling=0.25, softcap=softcap
    )
    got, _ = stitch_attention_forward(
        module, q, k, v, boolean, scaling=0.25, softcap=softcap
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    without, _ = stitch_attention_forward(module, q, k, v, boolean, scaling=0.25)
    assert (without - expected).abs().max() > 1e-2


def test_sinks_softcap_and_no_mask_is_causal() -> None:
    """No mask and more than one query: causal, upper-left, as SDPA's flag."""
    module = Attention(torch.full((HEADS,), 0.5))
    q, k, v = qkv(4, 4)
    boolean, additive = causal_masks(4, 4)
    boolean[1, :, :, 0] = True  # no padding: the mask is what is_causal means
    additive = additive.clone()
    additive[1, :, :, 0] = 0.0
    got, _ = stitch_attention_forward(
        module, q, k, v, None, s_aux=module.sinks, softcap=2.0
    )
    masked, _ = stitch_attention_forward(
        module, q, k, v, boolean, s_aux=module.sinks, softcap=2.0
    )
    torch.testing.assert_close(got, masked, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("with_mask", [False, True])
def test_position_bias_matches_transformers_sdpa(with_mask: bool) -> None:
    module = Attention()
    q, k, v = qkv(4, 4)
    bias = torch.randn(1, HEADS, 4, 4, generator=torch.Generator().manual_seed(2))
    mask = causal_masks(4, 4)[0] if with_mask else None
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, position_bias=bias)
    got, _ = stitch_attention_forward(module, q, k, v, mask, position_bias=bias)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_sliding_window_without_its_mask_is_refused() -> None:
    q, k, v = qkv(1, 9)
    with pytest.raises(
        StitchRuntimeError, match=r"sliding_window=8 with 9 keys and no attention mask"
    ):
        stitch_attention_forward(Attention(), q, k, v, None, sliding_window=8)
    # inside the window, or with the mask that carries it: taken
    stitch_attention_forward(
        Attention(), q, k[:, :, :8], v[:, :, :8], None, sliding_window=8
    )
    stitch_attention_forward(
        Attention(),
        q,
        k,
        v,
        torch.ones(BATCH, 1, 1, 9, dtype=torch.bool),
        sliding_window=8,
    )


def test_sinks_of_the_wrong_shape_are_refused() -> None:
    q, k, v = qkv(2, 2)
    with pytest.raises(
        StitchRuntimeError,
        match=r"s_aux has shape \(3,\), expected one sink per head \(4\)",
    ):
        stitch_attention_forward(Attention(), q, k, v, None, s_aux=torch.zeros(3))
