# Stitching source emitted by stitch.codegen (format 1).
# pieces: 5 (3 called through __vllm_submods__, 2 inlined); constants: 0
# graph: sha256:3cf28f5ad2f8a2d3
import torch


def __vllm_inlined_submods__1(flatten):
    """Inlined piece submod_1."""
    scale = torch.ops.stitchtest.scale(flatten, 2.0)
    del flatten
    return scale


def __vllm_inlined_submods__3(add):
    """Inlined piece submod_3."""
    scale_1 = torch.ops.stitchtest.scale(add, 0.5)
    del add
    return scale_1


def execution_fn(x, y, *, __vllm_submods__):
    submod_0 = __vllm_submods__[0](x)
    submod_1 = __vllm_inlined_submods__1(submod_0)
    del submod_0
    submod_2 = __vllm_submods__[1](x, submod_1, y)
    del y, submod_1
    submod_3 = __vllm_inlined_submods__3(submod_2)
    del submod_2
    submod_4 = __vllm_submods__[2](x, submod_3)
    del x, submod_3
    return submod_4
