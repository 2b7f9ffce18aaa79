"""Tensor parallelism on ``torch.distributed``: the TP llama, its sharding and collectives.

The tensor-parallel variant of :class:`~stitch.runtime.examples.LlamaModel` splits
every attention block by heads and every MLP by its intermediate size, in the
Megatron way: QKV and gate/up projections are column-parallel (each rank computes
its own heads / intermediate columns), O and down projections are row-parallel
(each rank multiplies its slice and an all-reduce sums the partial results).

The all-reduce is ``torch.distributed._functional_collectives.all_reduce``, so
Dynamo and ``make_fx`` record it in the graph as two ops::

    t = torch.ops._c10d_functional.all_reduce(x, "sum", group_name)
    y = torch.ops._c10d_functional.wait_tensor(t)

Stitch then either lets Inductor compile them inside a piece (the default) or,
with ``CompilationConfig(splitting_ops=[ATTENTION_OP, *COLLECTIVE_OPS])``, runs
them eagerly between pieces.  torch.distributed is the only communication layer.

:func:`~stitch.runtime.examples.launch.launch` runs a function on N local ranks (gloo, loopback) and ends the job
with a clear error, instead of hanging, when a rank fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from stitch.core.errors import StitchConfigError, StitchRuntimeError

from ..kernels.attention import ATTENTION_OP
from .launch import launch  # noqa: F401 - re-exported
from .models import (
    LlamaConfig,
    LlamaModel,
    RMSNorm,
    apply_rotary,
    build_llama,
    register_attention_state,
    trace_module,
)

# NOTE: [what Dynamo records for a functional collective]
# funcol.all_reduce(x, "sum", group) becomes
#   _c10d_functional.all_reduce(x, "sum", "<group name>")   -> an async result
#   _c10d_functional.wait_tensor(result)                    -> the reduced tensor
# (as OpOverloadPackets under Dynamo, ``.default`` overloads under make_fx).  The
# wait belongs with its collective: left out of the splitting ops it would be
# compiled into the next piece, which would then block on a work handle issued
# outside it (so that piece is no longer free of communication, the point of
# running collectives eagerly).  Listed together they stay together:
# split_graph puts consecutive splitting ops in one piece.
COLLECTIVE_OPS: tuple[str, ...] = (
    "_c10d_functional::all_reduce",
    "_c10d_functional::all_reduce_coalesced",
    "_c10d_functional::all_gather_into_tensor",
    "_c10d_functional::all_gather_into_tensor_coalesced",
    "_c10d_functional::reduce_scatter_tensor",
    "_c10d_functional::reduce_scatter_tensor_coalesced",
    "_c10d_functional::all_to_all_single",
    "_c10d_functional::broadcast",
    "_c10d_functional::wait_tensor",
)

# The two ways a TP model is split: collectives compiled inside the pieces, or
# run eagerly between them (as serving stacks do with custom all-reduce kernels).
IN_PIECE_SPLITTING_OPS: tuple[str, ...] = (ATTENTION_OP,)
EAGER_COLLECTIVE_SPLITTING_OPS: tuple[str, ...] = (ATTENTION_OP, *COLLECTIVE_OPS)


def all_reduce(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Sum ``x`` over ``group`` with the functional (traceable) all-reduce."""
    from torch.distributed import _functional_collectives as funcol

    return funcol.all_reduce(x, "sum", group)


def check_divisible(cfg: LlamaConfig, tp_size: int) -> None:
    """Refuse a config whose heads or MLP width do not split over ``tp_size`` ranks."""
    if type(tp_size) is not int or tp_size < 1:
        raise StitchConfigError(f"tp_size={tp_size!r} must be a positive int")
    for field in ("num_heads", "intermediate_size"):
        value = getattr(cfg, field)
        if value % tp_size:
            raise StitchConfigError(
                f"LlamaConfig.{field}={value} is not divisible by tp_size={tp_size}; "
                f"choose a tensor-parallel size that divides it"
            )


class ColumnParallelLinear(nn.Module):
    """``y = x @ W_r.T`` for this rank's output columns; no communication."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class RowParallelLinear(nn.Module):
    """``y = sum_r x_r @ W_r.T``: this rank's input slice, then an all-reduce."""

    def __init__(self, in_features: int, out_features: int, group: Any) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return all_reduce(F.linear(x, self.weight), self.group)


class TPAttention(nn.Module):
    """This rank's heads: column-parallel QKV, decode attention, row-parallel O."""

    def __init__(self, cfg: LlamaConfig, tp_size: int, group: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_heads = cfg.num_heads // tp_size
        local = self.num_heads * cfg.head_dim
        self.local_size = local
        self.qkv_proj = ColumnParallelLinear(cfg.hidden_size, 3 * local)
        self.o_proj = RowParallelLinear(local, cfg.hidden_size, group)
        register_attention_state(self, cfg, self.num_heads)

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        heads, dim = self.num_heads, self.cfg.head_dim
        q, k, v = self.qkv_proj(x).split(self.local_size, dim=-1)
        q = apply_rotary(q.reshape(n, heads, dim), positions, self.inv_freq)
        k = apply_rotary(k.reshape(n, heads, dim), positions, self.inv_freq)
        v = v.reshape(n, heads, dim)
        out = torch.empty_like(q)
        torch.ops.stitch.attention(
            q, k, v, self.k_cache, self.v_cache, positions, out, self.scale
        )
        return self.o_proj(out.reshape(n, self.local_size))


class TPMLP(nn.Module):
    """Column-parallel gate/up, SiLU-gated product, row-parallel down."""

    def __init__(self, cfg: LlamaConfig, tp_size: int, group: Any) -> None:
        super().__init__()
        local = cfg.intermediate_size // tp_size
        self.gate_up_proj = ColumnParallelLinear(cfg.hidden_size, 2 * local)
        self.down_proj = RowParallelLinear(local, cfg.hidden_size, group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class TPDecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, tp_size: int, group: Any) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.self_attn = TPAttention(cfg, tp_size, group)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.mlp = TPMLP(cfg, tp_size, group)

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(positions, self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class TPLlamaModel(LlamaModel):
    """One rank of the tensor-parallel llama-like decoder: :class:`LlamaModel`
    with this rank's decoder layers (its forward and ``reset_kv_caches``).

    Module names match :class:`LlamaModel`'s, so emitted source names the same
    modules.  The embedding and the norms are replicated on every rank.
    """

    def __init__(self, cfg: LlamaConfig, tp_size: int, group: Any = None) -> None:
        check_divisible(cfg, tp_size)
        layers = [TPDecoderLayer(cfg, tp_size, group) for _ in range(cfg.num_layers)]
        super().__init__(cfg, layers)
        self.tp_size = tp_size


# --------------------------------------------------------------------------------
# Sharding: one rank's weights cut from the unsharded model's.
# --------------------------------------------------------------------------------


def _rows(weight: torch.Tensor, parts: int, rank: int, tp_size: int) -> torch.Tensor:
    """Rank ``rank``'s rows of each of ``parts`` stacked blocks (e.g. Q, K, V)."""
    out_features, in_features = weight.shape
    blocks = weight.reshape(
        parts, tp_size, out_features // (parts * tp_size), in_features
    )
    return blocks[:, rank].reshape(-1, in_features)


def shard_state_dict(
    state: dict[str, torch.Tensor], cfg: LlamaConfig, rank: int, tp_size: int
) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s TP state dict from the unsharded :class:`LlamaModel`'s.

    QKV rows are cut per head inside each of Q, K and V (the heads a rank owns);
    gate/up rows inside each of gate and up; O and down columns match those.
    """
    check_divisible(cfg, tp_size)
    if not 0 <= rank < tp_size:
        raise StitchConfigError(f"rank={rank} is outside [0, tp_size={tp_size})")
    sharded: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name.endswith("self_attn.qkv_proj.weight"):
            value = _rows(value, 3, rank, tp_size)
        elif name.endswith("mlp.gate_up_proj.weight"):
            value = _rows(value, 2, rank, tp_size)
        elif name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            value = value.chunk(tp_size, dim=1)[rank]
        elif name.endswith(("self_attn.k_cache", "self_attn.v_cache")):
            # Caches hold this rank's heads only (dim 2 of [seqs, len, heads, dim]).
            value = value.chunk(tp_size, dim=2)[rank]
        sharded[name] = value.contiguous().clone()
    return sharded


def shard_llama(model: LlamaModel, group: Any = None) -> TPLlamaModel:
    """This rank's :class:`TPLlamaModel` holding its shard of ``model``'s weights."""
    if not (dist.is_available() and dist.is_initialized()):
        raise StitchRuntimeError(
            "the tensor-parallel model needs torch.distributed: call "
            "torch.distributed.init_process_group first (or use stitch.runtime.examples.launch.launch)"
        )
    group = dist.group.WORLD if group is None else group
    rank, tp_size = dist.get_rank(group), dist.get_world_size(group)
    tp = TPLlamaModel(model.cfg, tp_size, group)
    tp.load_state_dict(shard_state_dict(model.state_dict(), model.cfg, rank, tp_size))
    return tp.to(model.cfg.dtype).eval()


def build_tp_llama(
    cfg: LlamaConfig, seed: int = 0, group: Any = None
) -> tuple[LlamaModel, TPLlamaModel]:
    """The unsharded model (``build_llama(cfg, seed)``) and this rank's shard of it."""
    full = build_llama(cfg, seed)
    return full, shard_llama(full, group)


def trace_tp(model: nn.Module, inputs: Sequence[Any]) -> fx.GraphModule:
    """``make_fx`` graph of a TP model's forward, symbolic in the token count.

    Node names depend only on the model's code, so the graph (and the source
    emitted from it) is the same on every rank and in every process.  Tracing
    runs on fake tensors: the collectives are recorded, not executed.
    """
    return trace_module(model, inputs, "symbolic")
