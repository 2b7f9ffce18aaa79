# Stitching source emitted by stitch.codegen (format 5).
# pieces: 3 (2 called through __vllm_submods__, 1 inlined); constants: 0
# graph: sha256:3a2c5949f05239c5
import torch

stitchtest_scale = torch.ops.stitchtest.scale
stitchtest_add_into = torch.ops.stitchtest.add_into


def __vllm_inlined_submods__1(sub):
    """Inlined piece submod_1."""
    scale = stitchtest_scale(sub, 2.0)
    scale_1 = stitchtest_scale(scale, 3.0, tag="second")
    empty_like = torch.empty_like(scale_1)
    stitchtest_add_into(scale, scale_1, empty_like)
    return empty_like


def execution_fn(x, y, *, __vllm_submods__):
    # the compiled pieces, bound to locals once per forward
    submod_0, submod_2 = __vllm_submods__
    sub = submod_0(x, y)
    empty_like = __vllm_inlined_submods__1(sub)
    del sub
    mul = submod_2(empty_like, y)
    return mul
