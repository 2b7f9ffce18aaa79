# Stitching source emitted by stitch.codegen (format 2).
# pieces: 5 (3 called through __vllm_submods__, 2 inlined); constants: 0
# graph: sha256:3cf28f5ad2f8a2d3
import torch

stitchtest_scale = torch.ops.stitchtest.scale


def execution_fn(x, y, *, __vllm_submods__):
    submod_0 = __vllm_submods__[0](x)
    scale = stitchtest_scale(submod_0, 2.0)
    del submod_0
    submod_2 = __vllm_submods__[1](x, scale, y)
    del scale
    scale_1 = stitchtest_scale(submod_2, 0.5)
    del submod_2
    submod_4 = __vllm_submods__[2](x, scale_1)
    return submod_4
