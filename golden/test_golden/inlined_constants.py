# Stitching source emitted by stitch.codegen (format 1).
# pieces: 3 (2 called through __vllm_submods__, 1 inlined); constants: 1
# graph: sha256:c8987e9b1d91596e
import torch


def __vllm_inlined_submods__1(mul, table):
    """Inlined piece submod_1."""
    encode = torch.ops.stitchtest.encode(
        mul,
        [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 1e-300, 2.5],
        True,
        'it\'s "quoted"\n',
    )
    pair = torch.ops.stitchtest.pair(encode)
    del encode
    getitem = pair[0]
    getitem_1 = getitem[(..., slice(None, None, 2))]
    del getitem
    getitem_2 = pair[1]
    del pair
    getitem_3 = getitem_2[(slice(1, None, None), None)]
    del getitem_2
    weighted_sum = torch.ops.stitchtest.weighted_sum([table, mul], [-0.25, 1.0])
    del mul, table
    return (getitem_1, getitem_3, weighted_sum)


def execution_fn(x, *, __vllm_submods__):
    submod_0 = __vllm_submods__[0](x)
    del x
    submod_1 = __vllm_inlined_submods__1(submod_0, __vllm_consts__[0])
    del submod_0
    getitem_1 = submod_1[0]
    getitem_3 = submod_1[1]
    weighted_sum = submod_1[2]
    del submod_1
    submod_2 = __vllm_submods__[1](getitem_1, getitem_3)
    del getitem_1, getitem_3
    add = submod_2[0]
    mul_1 = submod_2[1]
    del submod_2
    return (add, mul_1, weighted_sum)
