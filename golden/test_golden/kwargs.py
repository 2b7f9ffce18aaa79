# Stitching source emitted by stitch.codegen (format 5).
# pieces: 3 (2 called through __vllm_submods__, 1 inlined); constants: 0
# graph: sha256:61d39affbad12f14
import torch

stitchtest_scale = torch.ops.stitchtest.scale
stitchtest_weighted_sum = torch.ops.stitchtest.weighted_sum


def __vllm_inlined_submods__1(cat):
    """Inlined piece submod_1."""
    scale = stitchtest_scale(cat, 2.0, dtype=torch.float64, tag="kw")
    weighted_sum = stitchtest_weighted_sum(xs=[scale, cat], weights=[0.5, -2.0])
    return weighted_sum


def execution_fn(x, y, *, __vllm_submods__):
    # the compiled pieces, bound to locals once per forward
    submod_0, submod_2 = __vllm_submods__
    cat = submod_0(x, y)
    weighted_sum = __vllm_inlined_submods__1(cat)
    del cat
    sum_1 = submod_2(weighted_sum)
    return sum_1
