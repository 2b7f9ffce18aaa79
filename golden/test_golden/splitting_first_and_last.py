# Stitching source emitted by stitch.codegen (format 5).
# pieces: 3 (1 called through __vllm_submods__, 2 inlined); constants: 0
# graph: sha256:011b20f4ce93f5a9
import torch

stitchtest_scale = torch.ops.stitchtest.scale


def execution_fn(x, y, *, __vllm_submods__):
    # the compiled pieces, bound to locals once per forward
    (submod_1,) = __vllm_submods__
    scale = stitchtest_scale(x, 2.0)
    add = submod_1(scale, y)
    del scale
    scale_1 = stitchtest_scale(add, -1.5)
    return scale_1
