# Stitching source emitted by stitch.codegen (format 5).
# pieces: 12 (6 called through __vllm_submods__, 6 inlined); constants: 0
# graph: sha256:eddbafc96685adca
import torch

stitchtest_scale = torch.ops.stitchtest.scale


def execution_fn(x, *, __vllm_submods__):
    # the compiled pieces, bound to locals once per forward
    submod_0, submod_2, submod_4, submod_6, submod_8, submod_10 = __vllm_submods__
    add = submod_0(x)
    scale = stitchtest_scale(add, 0.5)
    del add
    add_1 = submod_2(scale)
    del scale
    scale_1 = stitchtest_scale(add_1, 0.5)
    del add_1
    add_2 = submod_4(scale_1)
    del scale_1
    scale_2 = stitchtest_scale(add_2, 0.5)
    del add_2
    add_3 = submod_6(scale_2)
    del scale_2
    scale_3 = stitchtest_scale(add_3, 0.5)
    del add_3
    add_4 = submod_8(scale_3)
    del scale_3
    scale_4 = stitchtest_scale(add_4, 0.5)
    del add_4
    add_5 = submod_10(scale_4)
    del scale_4
    scale_5 = stitchtest_scale(add_5, 0.5)
    return scale_5
