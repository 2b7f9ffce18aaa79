# Stitching source emitted by stitch.codegen (format 2).
# pieces: 3 (2 called through __vllm_submods__, 1 inlined); constants: 0
# graph: sha256:318ec7681efed81b
import torch

stitchtest_scale = torch.ops.stitchtest.scale


def execution_fn(x, y, *, __vllm_submods__):
    submod_0 = __vllm_submods__[0](x)
    scale = stitchtest_scale(submod_0, 3.0)
    add, sum_1 = __vllm_submods__[1](scale, y)
    return (submod_0, [scale, (add, None)], {"sum": sum_1, "x": x}, 7)
