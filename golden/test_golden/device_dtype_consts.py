# Stitching source emitted by stitch.codegen (format 5).
# pieces: 5 (2 called through __vllm_submods__, 3 inlined); constants: 0
# graph: sha256:6e3bd54d6e90f351
import torch

stitchtest_convert = torch.ops.stitchtest.convert


def execution_fn(x, *, __vllm_submods__):
    # the compiled pieces, bound to locals once per forward
    submod_1, submod_3 = __vllm_submods__
    convert = stitchtest_convert(
        x,
        dtype=torch.float64,
        device=torch.device("cpu"),
        layout=torch.strided,
        memory_format=torch.contiguous_format,
    )
    mul = submod_1(convert)
    del convert
    convert_1 = stitchtest_convert(
        mul,
        dtype=torch.float64,
        device=torch.device("cpu"),
        layout=torch.strided,
        memory_format=torch.preserve_format,
    )
    del mul
    t = submod_3(convert_1)
    del convert_1
    convert_2 = stitchtest_convert(
        t,
        dtype=torch.float32,
        device=torch.device("cpu"),
        layout=torch.strided,
        memory_format=torch.contiguous_format,
    )
    return convert_2
