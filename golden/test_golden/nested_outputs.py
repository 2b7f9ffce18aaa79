# Stitching source emitted by stitch.codegen (format 1).
# pieces: 3 (2 called through __vllm_submods__, 1 inlined); constants: 0
# graph: sha256:318ec7681efed81b
import torch


def __vllm_inlined_submods__1(relu):
    """Inlined piece submod_1."""
    scale = torch.ops.stitchtest.scale(relu, 3.0)
    del relu
    return scale


def execution_fn(x, y, *, __vllm_submods__):
    submod_0 = __vllm_submods__[0](x)
    submod_1 = __vllm_inlined_submods__1(submod_0)
    submod_2 = __vllm_submods__[1](submod_1, y)
    del y
    add = submod_2[0]
    sum_1 = submod_2[1]
    del submod_2
    return (submod_0, [submod_1, (add, None)], {"sum": sum_1, "x": x}, 7)
