# Stitching source emitted by stitch.codegen (format 1).
# pieces: 12 (6 called through __vllm_submods__, 6 inlined); constants: 0
# graph: sha256:eddbafc96685adca
import torch


def __vllm_inlined_submods__1(add):
    """Inlined piece submod_1."""
    scale = torch.ops.stitchtest.scale(add, 0.5)
    del add
    return scale


def __vllm_inlined_submods__3(add_1):
    """Inlined piece submod_3."""
    scale_1 = torch.ops.stitchtest.scale(add_1, 0.5)
    del add_1
    return scale_1


def __vllm_inlined_submods__5(add_2):
    """Inlined piece submod_5."""
    scale_2 = torch.ops.stitchtest.scale(add_2, 0.5)
    del add_2
    return scale_2


def __vllm_inlined_submods__7(add_3):
    """Inlined piece submod_7."""
    scale_3 = torch.ops.stitchtest.scale(add_3, 0.5)
    del add_3
    return scale_3


def __vllm_inlined_submods__9(add_4):
    """Inlined piece submod_9."""
    scale_4 = torch.ops.stitchtest.scale(add_4, 0.5)
    del add_4
    return scale_4


def __vllm_inlined_submods__11(add_5):
    """Inlined piece submod_11."""
    scale_5 = torch.ops.stitchtest.scale(add_5, 0.5)
    del add_5
    return scale_5


def execution_fn(x, *, __vllm_submods__):
    submod_0 = __vllm_submods__[0](x)
    del x
    submod_1 = __vllm_inlined_submods__1(submod_0)
    del submod_0
    submod_2 = __vllm_submods__[1](submod_1)
    del submod_1
    submod_3 = __vllm_inlined_submods__3(submod_2)
    del submod_2
    submod_4 = __vllm_submods__[2](submod_3)
    del submod_3
    submod_5 = __vllm_inlined_submods__5(submod_4)
    del submod_4
    submod_6 = __vllm_submods__[3](submod_5)
    del submod_5
    submod_7 = __vllm_inlined_submods__7(submod_6)
    del submod_6
    submod_8 = __vllm_submods__[4](submod_7)
    del submod_7
    submod_9 = __vllm_inlined_submods__9(submod_8)
    del submod_8
    submod_10 = __vllm_submods__[5](submod_9)
    del submod_9
    submod_11 = __vllm_inlined_submods__11(submod_10)
    del submod_10
    return submod_11
