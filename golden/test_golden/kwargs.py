# Stitching source emitted by stitch.codegen (format 2).
# pieces: 3 (2 called through __vllm_submods__, 1 inlined); constants: 1
# graph: sha256:61d39affbad12f14
import torch

stitchtest_scale = torch.ops.stitchtest.scale
stitchtest_weighted_sum = torch.ops.stitchtest.weighted_sum


def __vllm_inlined_submods__1(cat):
    """Inlined piece submod_1."""
    scale = stitchtest_scale(cat, 2.0, dtype=__vllm_consts__[0], tag="kw")
    weighted_sum = stitchtest_weighted_sum(xs=[scale, cat], weights=[0.5, -2.0])
    return weighted_sum


def execution_fn(x, y, *, __vllm_submods__):
    submod_0 = __vllm_submods__[0](x, y)
    submod_1 = __vllm_inlined_submods__1(submod_0)
    del submod_0
    submod_2 = __vllm_submods__[1](submod_1)
    return submod_2
