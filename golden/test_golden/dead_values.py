# Stitching source emitted by stitch.codegen (format 1).
# pieces: 3 (2 called through __vllm_submods__, 1 inlined); constants: 0
# graph: sha256:a66d9ff77dd72956
import torch


def __vllm_inlined_submods__1(x, y, empty_like):
    """Inlined piece submod_1."""
    torch.ops.stitchtest.add_into(x, y, empty_like)
    del x, y
    pair = torch.ops.stitchtest.pair(empty_like)
    del empty_like
    getitem_1 = pair[1]
    del pair
    return getitem_1


def execution_fn(x, unused, y, *, __vllm_submods__):
    del unused
    submod_0 = __vllm_submods__[0](x)
    submod_1 = __vllm_inlined_submods__1(x, y, submod_0)
    del x, y, submod_0
    submod_2 = __vllm_submods__[1](submod_1)
    del submod_1
    return submod_2
