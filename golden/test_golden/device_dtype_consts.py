# Stitching source emitted by stitch.codegen (format 1).
# pieces: 5 (2 called through __vllm_submods__, 3 inlined); constants: 6
# graph: sha256:6e3bd54d6e90f351
import torch


def __vllm_inlined_submods__0(x):
    """Inlined piece submod_0."""
    convert = torch.ops.stitchtest.convert(
        x,
        dtype=__vllm_consts__[0],
        device=__vllm_consts__[1],
        layout=__vllm_consts__[2],
        memory_format=__vllm_consts__[3],
    )
    del x
    return convert


def __vllm_inlined_submods__2(mul):
    """Inlined piece submod_2."""
    convert_1 = torch.ops.stitchtest.convert(
        mul,
        dtype=__vllm_consts__[0],
        device=__vllm_consts__[1],
        layout=__vllm_consts__[2],
        memory_format=__vllm_consts__[4],
    )
    del mul
    return convert_1


def __vllm_inlined_submods__4(t):
    """Inlined piece submod_4."""
    convert_2 = torch.ops.stitchtest.convert(
        t,
        dtype=__vllm_consts__[5],
        device=__vllm_consts__[1],
        layout=__vllm_consts__[2],
        memory_format=__vllm_consts__[3],
    )
    del t
    return convert_2


def execution_fn(x, *, __vllm_submods__):
    submod_0 = __vllm_inlined_submods__0(x)
    del x
    submod_1 = __vllm_submods__[0](submod_0)
    del submod_0
    submod_2 = __vllm_inlined_submods__2(submod_1)
    del submod_1
    submod_3 = __vllm_submods__[1](submod_2)
    del submod_2
    submod_4 = __vllm_inlined_submods__4(submod_3)
    del submod_3
    return submod_4
