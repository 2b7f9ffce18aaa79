# Stitching source emitted by stitch.codegen (format 2).
# pieces: 3 (1 called through __vllm_submods__, 2 inlined); constants: 0
# graph: sha256:011b20f4ce93f5a9
import torch

stitchtest_scale = torch.ops.stitchtest.scale


def execution_fn(x, y, *, __vllm_submods__):
    scale = stitchtest_scale(x, 2.0)
    submod_1 = __vllm_submods__[0](scale, y)
    del scale
    scale_1 = stitchtest_scale(submod_1, -1.5)
    return scale_1
