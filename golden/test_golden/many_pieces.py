# Stitching source emitted by stitch.codegen (format 2).
# pieces: 12 (6 called through __vllm_submods__, 6 inlined); constants: 0
# graph: sha256:eddbafc96685adca
import torch

stitchtest_scale = torch.ops.stitchtest.scale


def execution_fn(x, *, __vllm_submods__):
    submod_0 = __vllm_submods__[0](x)
    scale = stitchtest_scale(submod_0, 0.5)
    del submod_0
    submod_2 = __vllm_submods__[1](scale)
    del scale
    scale_1 = stitchtest_scale(submod_2, 0.5)
    del submod_2
    submod_4 = __vllm_submods__[2](scale_1)
    del scale_1
    scale_2 = stitchtest_scale(submod_4, 0.5)
    del submod_4
    submod_6 = __vllm_submods__[3](scale_2)
    del scale_2
    scale_3 = stitchtest_scale(submod_6, 0.5)
    del submod_6
    submod_8 = __vllm_submods__[4](scale_3)
    del scale_3
    scale_4 = stitchtest_scale(submod_8, 0.5)
    del submod_8
    submod_10 = __vllm_submods__[5](scale_4)
    del scale_4
    scale_5 = stitchtest_scale(submod_10, 0.5)
    return scale_5
