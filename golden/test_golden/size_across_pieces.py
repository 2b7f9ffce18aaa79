# Stitching source emitted by stitch.codegen (format 5).
# pieces: 5 (3 called through __vllm_submods__, 2 inlined); constants: 0
# graph: sha256:3cf28f5ad2f8a2d3
import torch

stitchtest_scale = torch.ops.stitchtest.scale


def execution_fn(x, y, *, __vllm_submods__):
    # the compiled pieces, bound to locals once per forward
    submod_0, submod_2, submod_4 = __vllm_submods__
    flatten = submod_0(x)
    scale = stitchtest_scale(flatten, 2.0)
    del flatten
    add = submod_2(x, scale, y)
    del scale
    scale_1 = stitchtest_scale(add, 0.5)
    del add
    mul = submod_4(x, scale_1)
    return mul
