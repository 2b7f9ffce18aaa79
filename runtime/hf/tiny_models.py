"""Tiny random-weight transformers models, one per family Stitch is tested on.

Each :class:`Family` holds a transformers config class and the fields that make
it tiny (hidden size <= 128, 2 layers, vocabulary <= 1000): building one needs
no download, only ``from_config`` and a seed.  The CLI (``stitch run --hf``),
the tests and ``bench/hf_llama.py`` build their models here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from stitch.core.errors import StitchConfigError

VOCAB = 512
# Token ids every family shares (all below VOCAB).
SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family: its transformers config and how its tiny model is built."""

    name: str
    config_class: str  # a class of transformers
    fields: dict[str, Any]
    layers_field: str = "num_hidden_layers"
    # "causal": AutoModelForCausalLM (logits); "encoder": AutoModel with an
    # attention mask (last hidden state).
    kind: str = "causal"
    description: str = ""
    # The standard deviation of the attention sinks' random init (0: leave
    # transformers' init): GPT-OSS's default is so small that sinks barely
    # change a tiny model's numbers, and a test could not see them ignored.
    sinks: float = 0.0
    # The attention transformers picks by default: "sdpa", or "eager" for the
    # models SDPA lacks a feature of (their graphs hold nothing to split at).
    default_attention: str = "sdpa"


_DECODER = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    **SPECIAL_IDS,
}

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "llama",
            "LlamaConfig",
            dict(_DECODER),
            description="Llama: RMSNorm, rotary, GQA, SwiGLU",
        ),
        Family(
            "qwen2",
            "Qwen2Config",
            dict(_DECODER),
            description="Qwen2: Llama with q/k/v biases",
        ),
        Family(
            "mistral",
            "MistralConfig",
            {**_DECODER, "sliding_window": 8},
            description="Mistral: sliding-window attention (window 8, shorter than the longer inputs)",
        ),
        Family(
            "mixtral",
            "MixtralConfig",
            {
                **_DECODER,
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
                "sliding_window": None,
            },
            description="Mixtral: mixture of experts (4 experts, top 2)",
        ),
        Family(
            "gpt2",
            "GPT2Config",
            {
                "vocab_size": VOCAB,
                "n_embd": 64,
                "n_head": 4,
                "n_positions": 256,
                **SPECIAL_IDS,
            },
            layers_field="n_layer",
            description="GPT-2: LayerNorm, learned positions, Conv1D projections",
        ),
        Family(
            "gemma",
            "GemmaConfig",
            {**_DECODER, "head_dim": 16},
            description="Gemma: scaled embeddings, GeGLU, (1 + weight) RMSNorm",
        ),
        Family(
            "gemma2",
            "Gemma2Config",
            {
                **_DECODER,
                "head_dim": 16,
                "sliding_window": 8,
                # Small enough to bend the tiny model's scores, so a missing
                # softcap changes the numbers.
                "attn_logit_softcapping": 0.5,
                "final_logit_softcapping": 30.0,
            },
            default_attention="eager",
            description="Gemma 2: attention logit softcapping, alternating sliding "
            "windows (8), eager attention by default",
        ),
        Family(
            "gpt_oss",
            "GptOssConfig",
            {
                **_DECODER,
                "head_dim": 16,
                "sliding_window": 8,
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
            },
            sinks=1.0,
            default_attention="eager",
            description="GPT-OSS: attention sinks, alternating sliding windows (8), "
            "mixture of experts, eager attention by default",
        ),
        Family(
            "phi3",
            "Phi3Config",
            {**_DECODER, "original_max_position_embeddings": 256},
            description="Phi-3: fused qkv and gate/up projections",
        ),
        Family(
            "bert",
            "BertConfig",
            {
                "vocab_size": VOCAB,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "max_position_embeddings": 256,
                "pad_token_id": 0,
            },
            kind="encoder",
            description="BERT: bidirectional encoder with a padding attention mask",
        ),
    )
}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise StitchConfigError(
            f"unknown model family {name!r}; known: {known}"
        ) from None


def tiny_config(name: str, *, layers: int = 2, **overrides: Any) -> Any:
    """The transformers config of ``name`` with ``layers`` layers."""
    import transformers

    fam = family(name)
    cls = getattr(transformers, fam.config_class)
    return cls(**{**fam.fields, fam.layers_field: layers, **overrides})


def build_model(
    name: str,
    *,
    layers: int = 2,
    attn_implementation: str | None = None,
    seed: int = 0,
    **overrides: Any,
) -> torch.nn.Module:
    """A tiny ``name`` model in eval mode with random weights drawn from ``seed``.

    ``attn_implementation`` None is the model's default (transformers picks
    SDPA where the model supports it, else its eager attention);
    ``"stitch"`` registers Stitch's attention first.
    """
    import transformers

    if attn_implementation == "stitch":
        from .registration import register

        register()
    fam = family(name)
    config = tiny_config(name, layers=layers, **overrides)
    auto = (
        transformers.AutoModelForCausalLM
        if fam.kind == "causal"
        else transformers.AutoModel
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config, attn_implementation=attn_implementation)
        if fam.sinks:
            for module in model.modules():
                if isinstance(getattr(module, "sinks", None), torch.nn.Parameter):
                    torch.nn.init.normal_(module.sinks, std=fam.sinks)
    return model.eval()


def example_inputs(name: str, batch: int, seq: int, *, seed: int = 0) -> dict[str, Any]:
    """Keyword arguments of one forward: ``batch`` sequences of ``seq`` tokens.

    Decoders get ``use_cache=False`` (a plain forward over the whole sequence);
    the encoder gets an attention mask whose last token of every other row is
    padding, so masking is exercised.
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, seq), generator=gen)
    if family(name).kind == "encoder":
        mask = torch.ones(batch, seq, dtype=torch.long)
        if seq > 1:
            mask[::2, -1] = 0
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": ids, "use_cache": False}


def output_tensor(name: str, output: Any) -> torch.Tensor:
    """The tensor to compare of a model's output (logits, or the last hidden state)."""
    if family(name).kind == "encoder":
        return output.last_hidden_state
    return output.logits
