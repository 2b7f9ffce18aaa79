# Stitching source emitted by stitch.codegen (format 1).
# pieces: 3 (1 called through __vllm_submods__, 2 inlined); constants: 0
# graph: sha256:011b20f4ce93f5a9
import torch


def __vllm_inlined_submods__0(x):
    """Inlined piece submod_0."""
    scale = torch.ops.stitchtest.scale(x, 2.0)
    del x
    return scale


def __vllm_inlined_submods__2(add):
    """Inlined piece submod_2."""
    scale_1 = torch.ops.stitchtest.scale(add, -1.5)
    del add
    return scale_1


def execution_fn(x, y, *, __vllm_submods__):
    submod_0 = __vllm_inlined_submods__0(x)
    del x
    submod_1 = __vllm_submods__[0](submod_0, y)
    del y, submod_0
    submod_2 = __vllm_inlined_submods__2(submod_1)
    del submod_1
    return submod_2
