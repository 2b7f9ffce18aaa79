# Stitching source emitted by stitch.codegen (format 5).
# pieces: 3 (2 called through __vllm_submods__, 1 inlined); constants: 0
# graph: sha256:318ec7681efed81b
import torch

stitchtest_scale = torch.ops.stitchtest.scale


def execution_fn(x, y, *, __vllm_submods__):
    # the compiled pieces, bound to locals once per forward
    submod_0, submod_2 = __vllm_submods__
    relu = submod_0(x)
    scale = stitchtest_scale(relu, 3.0)
    add, sum_1 = submod_2(scale, y)
    return (relu, [scale, (add, None)], {"sum": sum_1, "x": x}, 7)
