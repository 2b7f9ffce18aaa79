# Stitching source emitted by stitch.codegen (format 1).
# pieces: 4 (2 called through __vllm_submods__, 2 inlined); constants: 0
# graph: sha256:54bcc0151016607a
import torch


def __vllm_inlined_submods__1(sub):
    """Inlined piece submod_1."""
    scale = torch.ops.stitchtest.scale(sub, 2.0)
    del sub
    scale_1 = torch.ops.stitchtest.scale(scale, 3.0, tag="second")
    return (scale_1, scale)


def __vllm_inlined_submods__2(scale_1, scale):
    """Inlined piece submod_2."""
    empty_like = torch.empty_like(scale_1)
    torch.ops.stitchtest.add_into(scale, scale_1, empty_like)
    del scale_1, scale
    return empty_like


def execution_fn(x, y, *, __vllm_submods__):
    submod_0 = __vllm_submods__[0](x, y)
    del x
    submod_1 = __vllm_inlined_submods__1(submod_0)
    del submod_0
    getitem = submod_1[0]
    getitem_1 = submod_1[1]
    del submod_1
    submod_2 = __vllm_inlined_submods__2(getitem, getitem_1)
    del getitem, getitem_1
    submod_3 = __vllm_submods__[1](submod_2, y)
    del y, submod_2
    return submod_3
