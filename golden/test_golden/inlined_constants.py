# Stitching source emitted by stitch.codegen (format 5).
# pieces: 3 (2 called through __vllm_submods__, 1 inlined); constants: 1
# graph: sha256:c8987e9b1d91596e
# __vllm_consts__, set by the loader (slot: graph attribute, in the module reading it: value):
#   [0] table: Tensor(float32, [3, 4], cpu)
import torch

stitchtest_encode = torch.ops.stitchtest.encode
stitchtest_pair = torch.ops.stitchtest.pair
stitchtest_weighted_sum = torch.ops.stitchtest.weighted_sum


def __vllm_inlined_submods__1(mul, table):
    """Inlined piece submod_1."""
    encode = stitchtest_encode(
        mul,
        [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 1e-300, 2.5],
        True,
        'it\'s "quoted"\n',
    )
    pair = stitchtest_pair(encode)
    del encode
    getitem = pair[0]
    getitem_1 = getitem[(..., slice(None, None, 2))]
    del getitem
    getitem_2 = pair[1]
    del pair
    getitem_3 = getitem_2[(slice(1, None, None), None)]
    del getitem_2
    weighted_sum = stitchtest_weighted_sum([table, mul], [-0.25, 1.0])
    return (getitem_1, getitem_3, weighted_sum)


def execution_fn(x, *, __vllm_submods__):
    # the compiled pieces, bound to locals once per forward
    submod_0, submod_2 = __vllm_submods__
    mul = submod_0(x)
    getitem_1, getitem_3, weighted_sum = __vllm_inlined_submods__1(
        mul, __vllm_consts__[0]
    )
    del mul
    add, mul_1 = submod_2(getitem_1, getitem_3)
    return (add, mul_1, weighted_sum)
