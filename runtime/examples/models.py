"""Built-in example models: small, deterministic, and shaped like served LLMs.

Each :class:`Example` builds a model with fixed random weights, example inputs,
and the FX graph of its forward (``make_fx``, so node names are stable).  The
CLI, the golden tests and the benchmarks use them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from stitch.codegen import split_graph

from ..kernels.attention import ATTENTION_OP


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 128
    hidden_size: int = 64
    num_heads: int = 4
    num_layers: int = 3
    intermediate_size: int = 128
    max_seqs: int = 64
    max_len: int = 32
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0
    dtype: torch.dtype = torch.float32

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


def apply_rotary(
    x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor
) -> torch.Tensor:
    freqs = positions[:, None].float() * inv_freq[None, :]  # [n, D/2]
    cos = freqs.cos()[:, None, :]
    sin = freqs.sin()[:, None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return rotated.to(x.dtype)


def register_attention_state(
    module: nn.Module, cfg: LlamaConfig, num_heads: int
) -> None:
    """The rotary frequencies, the per-layer KV caches for ``num_heads`` heads and
    the softmax scale of an attention module (full or one tensor-parallel rank's)."""
    module.register_buffer(
        "inv_freq",
        1.0
        / cfg.rope_theta
        ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim),
        persistent=False,
    )
    cache_shape = (cfg.max_seqs, cfg.max_len, num_heads, cfg.head_dim)
    module.register_buffer("k_cache", torch.zeros(cache_shape, dtype=cfg.dtype))
    module.register_buffer("v_cache", torch.zeros(cache_shape, dtype=cfg.dtype))
    module.scale = 1.0 / math.sqrt(cfg.head_dim)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.qkv_proj = nn.Linear(h, 3 * h, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)
        register_attention_state(self, cfg, cfg.num_heads)

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        n = x.shape[0]
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split(cfg.hidden_size, dim=-1)
        q = q.reshape(n, cfg.num_heads, cfg.head_dim)
        k = k.reshape(n, cfg.num_heads, cfg.head_dim)
        v = v.reshape(n, cfg.num_heads, cfg.head_dim)
        q = apply_rotary(q, positions, self.inv_freq)
        k = apply_rotary(k, positions, self.inv_freq)
        out = torch.empty_like(q)
        torch.ops.stitch.attention(
            q, k, v, self.k_cache, self.v_cache, positions, out, self.scale
        )
        return self.o_proj(out.reshape(n, cfg.hidden_size))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(
            cfg.hidden_size, 2 * cfg.intermediate_size, bias=False
        )
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(positions, self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """A llama-like decoder: embedding, N decoder layers, final norm.

    ``layers``: the decoder layers, when not :class:`DecoderLayer`'s (one rank's
    of the tensor-parallel model, examples/tp.py, which shares this forward).
    """

    def __init__(self, cfg: LlamaConfig, layers: Iterable[nn.Module] = ()) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            list(layers) or [DecoderLayer(cfg) for _ in range(cfg.num_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(positions, x)
        return self.norm(x)

    def reset_kv_caches(self) -> None:
        for layer in self.layers:
            layer.self_attn.k_cache.zero_()
            layer.self_attn.v_cache.zero_()


def build_llama(cfg: LlamaConfig, seed: int = 0) -> LlamaModel:
    """The llama-like model with deterministic random weights (scaled for fp16)."""
    gen = torch.Generator().manual_seed(seed)
    model = LlamaModel(cfg)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("layernorm.weight") or name == "norm.weight":
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(
                    torch.randn(param.shape, generator=gen) / math.sqrt(param.shape[-1])
                )
    return model.to(cfg.dtype).eval()


def llama_inputs(
    cfg: LlamaConfig, num_tokens: int, seed: int = 0, device: Any = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode inputs: one new token for each of ``num_tokens`` sequences."""
    if not 1 <= num_tokens <= cfg.max_seqs:
        raise ValueError(f"num_tokens={num_tokens} must be in [1, {cfg.max_seqs}]")
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, cfg.vocab_size, (num_tokens,), generator=gen)
    positions = torch.randint(0, cfg.max_len, (num_tokens,), generator=gen)
    return input_ids.to(device), positions.to(device)


def trace_module(
    model: nn.Module, inputs: Sequence[Any], tracing_mode: str = "real"
) -> fx.GraphModule:
    """``make_fx`` graph of ``model(*inputs)`` with ``nn_module_stack`` metadata.

    ``tracing_mode="symbolic"`` keeps every input dimension symbolic and runs
    on fake tensors (collectives are recorded, not executed); the weights and
    caches stay real and become graph constants.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    def forward(*args: Any) -> Any:
        return model(*args)

    # NOTE: [module stacks in make_fx]
    # make_fx records nn_module_stack only for a callable that carries its
    # module as ``_orig_mod`` (as torch.compile's wrapper does); the graph
    # itself is the same as make_fx(model)'s.
    forward._orig_mod = model  # type: ignore[attr-defined]
    with torch.no_grad():
        return make_fx(
            forward,
            tracing_mode=tracing_mode,
            record_module_stack=True,
            _allow_non_fake_inputs=tracing_mode != "real",
        )(*inputs)


@dataclasses.dataclass(frozen=True)
class Example:
    """A built-in model with its example inputs and splitting ops."""

    name: str
    description: str
    build: Callable[[], tuple[nn.Module, tuple[Any, ...]]]
    splitting_ops: tuple[str, ...] = (ATTENTION_OP,)
    # make_fx tracing mode: "real" bakes the example shapes in, "symbolic" keeps
    # every input dimension symbolic (SymInt), e.g. a dynamic number of tokens.
    tracing_mode: str = "real"
    # Layers of the llama-like decoder it builds (None: another kind of model);
    # ``stitch run`` compiles these examples at any depth.
    llama_layers: int | None = None

    def trace(self) -> tuple[nn.Module, tuple[Any, ...], fx.GraphModule]:
        """The model, its inputs and its forward graph traced with ``make_fx``.

        Nodes carry ``nn_module_stack`` metadata, so emitted source names the
        module each piece covers.
        """
        model, inputs = self.build()
        return model, inputs, trace_module(model, inputs, self.tracing_mode)

    def split_graph_module(self) -> fx.GraphModule:
        _, _, gm = self.trace()
        split_gm, _ = split_graph(gm, list(self.splitting_ops))
        return split_gm


def _llama(layers: int) -> Callable[[], tuple[nn.Module, tuple[Any, ...]]]:
    def build() -> tuple[nn.Module, tuple[Any, ...]]:
        cfg = LlamaConfig(num_layers=layers)
        return build_llama(cfg), llama_inputs(cfg, 8)

    return build


class BareAttention(nn.Module):
    """Only the splitting op: decode attention over a KV cache into a new buffer."""

    def __init__(
        self,
        num_heads: int = 2,
        head_dim: int = 8,
        max_seqs: int = 8,
        max_len: int = 16,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.scale = 1.0 / math.sqrt(head_dim)
        cache_shape = (max_seqs, max_len, num_heads, head_dim)
        self.register_buffer("k_cache", torch.zeros(cache_shape))
        self.register_buffer("v_cache", torch.zeros(cache_shape))

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        out = torch.empty_like(q)
        torch.ops.stitch.attention(
            q, k, v, self.k_cache, self.v_cache, positions, out, self.scale
        )
        return out

    def reset_kv_caches(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()


def build_bare_attention() -> tuple[nn.Module, tuple[Any, ...]]:
    """:class:`BareAttention` and decode inputs for 4 sequences."""
    model = BareAttention()
    gen = torch.Generator().manual_seed(0)
    n, heads, dim = 4, model.k_cache.shape[2], model.k_cache.shape[3]
    q, k, v = (torch.randn(n, heads, dim, generator=gen) for _ in range(3))
    positions = torch.randint(0, model.max_len, (n,), generator=gen)
    return model, (q, k, v, positions)


EXAMPLES: dict[str, Example] = {}


def register_example(example: Example) -> Example:
    if example.name in EXAMPLES:
        raise ValueError(f"example {example.name!r} is already registered")
    EXAMPLES[example.name] = example
    return example


for _example in (
    Example(
        "llama",
        "3-layer llama-like decoder (RMSNorm, QKV, rotary, decode attention "
        "over a KV cache, O-proj, SwiGLU MLP) split at stitch::attention",
        _llama(3),
        llama_layers=3,
    ),
    Example(
        "two_layer",
        "2-layer llama-like decoder split at stitch::attention",
        _llama(2),
        llama_layers=2,
    ),
    Example(
        "llama_dynamic",
        "2-layer llama-like decoder traced with a symbolic number of tokens "
        "(SymInt batch dimension) split at stitch::attention",
        _llama(2),
        tracing_mode="symbolic",
        llama_layers=2,
    ),
    Example(
        "bare_attention",
        "a lone stitch::attention call (splitting op first and last): the "
        "whole graph is one inlined piece and nothing is compiled",
        build_bare_attention,
    ),
):
    register_example(_example)
del _example


def runnable_examples() -> dict[str, int]:
    """Example name -> layers, for the examples ``stitch run`` can build at any depth."""
    return {
        name: e.llama_layers
        for name, e in EXAMPLES.items()
        if e.llama_layers is not None
    }
