# Stitching source emitted by stitch.codegen (format 5).
# pieces: 4 (2 called through __vllm_submods__, 2 inlined); constants: 0
# graph: sha256:859b6bf450469273
import torch

stitchtest_pair = torch.ops.stitchtest.pair
stitchtest_scale = torch.ops.stitchtest.scale


def __vllm_inlined_submods__0(x):
    """Inlined piece submod_0."""
    pair = stitchtest_pair(x)
    getitem = pair[0]
    getitem_1 = pair[1]
    return (getitem, getitem_1)


def execution_fn(x, y, *, __vllm_submods__):
    # the compiled pieces, bound to locals once per forward
    submod_1, submod_3 = __vllm_submods__
    getitem, getitem_1 = __vllm_inlined_submods__0(x)
    getitem, getitem_3 = submod_1(getitem, y)
    scale = stitchtest_scale(getitem_1, 0.5)
    del getitem_1
    add = submod_3(getitem, scale)
    return (add, getitem_3)
