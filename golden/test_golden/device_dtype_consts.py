# Stitching source emitted by stitch.codegen (format 3).
# pieces: 5 (2 called through __vllm_submods__, 3 inlined); constants: 6
# graph: sha256:6e3bd54d6e90f351
import torch

stitchtest_convert = torch.ops.stitchtest.convert


def execution_fn(x, *, __vllm_submods__):
    # the compiled pieces, bound to locals once per forward
    submod_1, submod_3 = __vllm_submods__
    convert = stitchtest_convert(
        x,
        dtype=__vllm_consts__[0],
        device=__vllm_consts__[1],
        layout=__vllm_consts__[2],
        memory_format=__vllm_consts__[3],
    )
    mul = submod_1(convert)
    del convert
    convert_1 = stitchtest_convert(
        mul,
        dtype=__vllm_consts__[0],
        device=__vllm_consts__[1],
        layout=__vllm_consts__[2],
        memory_format=__vllm_consts__[4],
    )
    del mul
    t = submod_3(convert_1)
    del convert_1
    convert_2 = stitchtest_convert(
        t,
        dtype=__vllm_consts__[5],
        device=__vllm_consts__[1],
        layout=__vllm_consts__[2],
        memory_format=__vllm_consts__[3],
    )
    return convert_2
