# Stitching source emitted by stitch.codegen (format 1).
# pieces: 4 (2 called through __vllm_submods__, 2 inlined); constants: 0
# graph: sha256:859b6bf450469273
import torch


def __vllm_inlined_submods__0(x):
    """Inlined piece submod_0."""
    pair = torch.ops.stitchtest.pair(x)
    del x
    getitem = pair[0]
    getitem_1 = pair[1]
    del pair
    return (getitem, getitem_1)


def __vllm_inlined_submods__2(getitem_1):
    """Inlined piece submod_2."""
    scale = torch.ops.stitchtest.scale(getitem_1, 0.5)
    del getitem_1
    return scale


def execution_fn(x, y, *, __vllm_submods__):
    submod_0 = __vllm_inlined_submods__0(x)
    del x
    getitem = submod_0[0]
    getitem_1 = submod_0[1]
    del submod_0
    submod_1 = __vllm_submods__[0](getitem, y)
    del y, getitem
    getitem_2 = submod_1[0]
    getitem_3 = submod_1[1]
    del submod_1
    submod_2 = __vllm_inlined_submods__2(getitem_1)
    del getitem_1
    submod_3 = __vllm_submods__[1](getitem_2, submod_2)
    del getitem_2, submod_2
    return (submod_3, getitem_3)
