"""A real pass: fuse an RMSNorm's ATen ops into one ``stitch::rms_norm`` call.

After Inductor's post-grad passes an RMSNorm ``x * rsqrt(mean(x**2, -1) + eps) * w``
is six ATen nodes (seven or nine with the casts of a low-precision model)::

    pow = aten.pow.Tensor_Scalar(xf, 2)          # xf: x, or x cast to float32
    mean = aten.mean.dim(pow, [-1], True)
    add = aten.add.Tensor(mean, eps)              # eps: a Python number
    rsqrt = aten.rsqrt.default(add)
    norm = aten.mul.Tensor(xf, rsqrt)
    cast = prims.convert_element_type(norm, x.dtype)   # only when xf is a cast
    out = aten.mul.Tensor(cast, w)

:class:`FuseRMSNorm` replaces each such chain by ``stitch::rms_norm(x, w, eps)``
when its intermediate values have no other users.  Importing this module
registers the op (with a CPU/CUDA kernel in plain torch and a fake kernel); the
process that loads compiled pieces made with the pass imports it too, since its
config names the pass.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import torch
import torch.fx as fx

from .base import InductorPass

aten = torch.ops.aten
prims = torch.ops.prims


@torch.library.custom_op("stitch::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension, computed in float32 like the unfused ops."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


@rms_norm.register_fake
def _rms_norm_fake(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(x, dtype=torch.promote_types(x.dtype, weight.dtype))


RMS_NORM_OP = torch.ops.stitch.rms_norm.default


@dataclasses.dataclass(frozen=True)
class _Match:
    x: fx.Node
    weight: fx.Node
    eps: float
    out: fx.Node
    chain: tuple[fx.Node, ...]  # the nodes the fused op replaces, in graph order


class FuseRMSNorm(InductorPass):
    """Fuse each RMSNorm chain of the post-grad graph into ``stitch::rms_norm``.

    ``fused`` counts the chains fused by this object so far (for tests and logs).
    """

    name = "FuseRMSNorm"

    def __init__(self) -> None:
        self.fused = 0

    def __call__(self, graph: fx.Graph) -> None:
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target is not aten.rsqrt.default:
                continue
            match = _match_at(node)
            if match is None:
                continue
            with graph.inserting_before(match.out):
                fused = graph.call_function(
                    RMS_NORM_OP, (match.x, match.weight, match.eps)
                )
            fused.meta.update(match.out.meta)
            match.out.replace_all_uses_with(fused)
            for dead in reversed(match.chain):
                graph.erase_node(dead)
            self.fused += 1


def _is(node: Any, *targets: Any) -> bool:
    return (
        isinstance(node, fx.Node)
        and node.op == "call_function"
        and node.target in targets
    )


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _other(node: fx.Node, known: Any) -> Any:
    """The operand of a binary ``node`` that is not ``known`` (None if neither/both)."""
    if len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    if a is known and b is not known:
        return b
    if b is known and a is not known:
        return a
    return None


def _cast(node: Any) -> tuple[Any, Any]:
    """``(input, dtype)`` when ``node`` only converts its input's dtype, else ``(None, None)``."""
    if _is(node, prims.convert_element_type.default) and len(node.args) == 2:
        return node.args[0], node.args[1]
    if (
        _is(node, aten._to_copy.default)
        and len(node.args) == 1
        and set(node.kwargs) == {"dtype"}
    ):
        return node.args[0], node.kwargs["dtype"]
    return None, None


def _dtype(node: Any) -> Any:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val.dtype if isinstance(val, torch.Tensor) else None


def _last_dim(dims: Any, node: fx.Node) -> bool:
    if not isinstance(dims, (list, tuple)) or len(dims) != 1:
        return False
    val = node.meta.get("val")
    ndim = val.dim() if isinstance(val, torch.Tensor) else None
    return dims[0] == -1 or (ndim is not None and dims[0] == ndim - 1)


def _match_at(rsqrt: fx.Node) -> _Match | None:
    add = rsqrt.args[0]
    if not _is(add, aten.add.Tensor, aten.add.Scalar) or len(add.users) != 1:
        return None
    mean = next((a for a in add.args[:2] if _is(a, aten.mean.dim)), None)
    if mean is None or len(mean.users) != 1:
        return None
    eps = _other(add, mean)
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool):
        return None
    pow_ = mean.args[0]
    keepdim = mean.args[2] if len(mean.args) > 2 else mean.kwargs.get("keepdim", False)
    if (
        not _is(pow_, aten.pow.Tensor_Scalar)
        or pow_.args[1] != 2
        or keepdim is not True
    ):
        return None
    if len(pow_.users) != 1 or not _last_dim(mean.args[1], pow_):
        return None
    norm = _only_user(rsqrt)
    if not _is(norm, aten.mul.Tensor):
        return None
    xa, xb = pow_.args[0], _other(norm, rsqrt)
    # Either both read x itself (a float32 model), or both read x cast to
    # float32 (one cast node or two), and the result is cast back to x's dtype.
    (ca, da), (cb, db) = _cast(xa), _cast(xb)
    casts: tuple[fx.Node, ...] = ()
    if ca is not None and cb is not None and ca is cb and da is db is torch.float32:
        x = ca
        casts = (xa,) if xa is xb else (xa, xb)
        if any(not set(c.users) <= {pow_, norm} for c in casts):
            return None
        back = _only_user(norm)
        back_in, back_dtype = _cast(back)
        if back_in is not norm or back_dtype is not _dtype(x):
            return None
        last: fx.Node = back
    elif xa is xb and isinstance(xa, fx.Node) and _dtype(xa) is torch.float32:
        x, last = xa, norm
    else:
        return None
    out = _only_user(last)
    if not _is(out, aten.mul.Tensor):
        return None
    weight = _other(out, last)
    wval = weight.meta.get("val") if isinstance(weight, fx.Node) else None
    if not isinstance(wval, torch.Tensor) or wval.dim() != 1:
        return None
    tail = (last,) if last is not norm else ()
    chain = (*casts, pow_, mean, add, rsqrt, norm, *tail, out)
    return _Match(x, weight, float(eps), out, chain)
