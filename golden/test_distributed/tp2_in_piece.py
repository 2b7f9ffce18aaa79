# Stitching source emitted by stitch.codegen (format 1).
# pieces: 5 (3 called through __vllm_submods__, 2 inlined); constants: 20
# graph: sha256:3fc40a321a4f461d
import torch


def __vllm_inlined_submods__1(
    cat, cat_1, view_2, _tensor_constant1, _tensor_constant2, arg1_1, empty_like
):
    """Inlined piece submod_1 (layers.0.self_attn)."""
    torch.ops.stitch.attention.default(
        cat,
        cat_1,
        view_2,
        _tensor_constant1,
        _tensor_constant2,
        arg1_1,
        empty_like,
        0.25,
    )
    del cat, cat_1, view_2, _tensor_constant1, _tensor_constant2, arg1_1, empty_like
    return ()


def __vllm_inlined_submods__3(
    cat_2, cat_3, view_6, _tensor_constant4, _tensor_constant5, arg1_1, empty_like_1
):
    """Inlined piece submod_3 (layers.1.self_attn)."""
    torch.ops.stitch.attention.default(
        cat_2,
        cat_3,
        view_6,
        _tensor_constant4,
        _tensor_constant5,
        arg1_1,
        empty_like_1,
        0.25,
    )
    del cat_2, cat_3, view_6, _tensor_constant4, _tensor_constant5, arg1_1, empty_like_1
    return ()


def execution_fn(arg0_1, arg1_1, *, __vllm_submods__):
    # embed_tokens .. layers.0.self_attn
    submod_0 = __vllm_submods__[0](
        __vllm_consts__[0],
        arg0_1,
        __vllm_consts__[1],
        __vllm_consts__[2],
        arg1_1,
        __vllm_consts__[3],
        __vllm_consts__[3],
    )
    del arg0_1
    cat = submod_0[0]
    cat_1 = submod_0[1]
    view_2 = submod_0[2]
    empty_like = submod_0[3]
    sym_size_int = submod_0[4]
    embedding = submod_0[5]
    del submod_0
    # layers.0.self_attn
    __vllm_inlined_submods__1(
        cat, cat_1, view_2, __vllm_consts__[4], __vllm_consts__[5], arg1_1, empty_like
    )
    del cat, cat_1, view_2
    # layers.0.self_attn .. layers.1.self_attn
    submod_2 = __vllm_submods__[1](
        empty_like,
        sym_size_int,
        __vllm_consts__[6],
        embedding,
        __vllm_consts__[7],
        __vllm_consts__[8],
        __vllm_consts__[9],
        __vllm_consts__[10],
        __vllm_consts__[11],
        arg1_1,
        __vllm_consts__[12],
        __vllm_consts__[12],
    )
    del empty_like, embedding
    cat_2 = submod_2[0]
    cat_3 = submod_2[1]
    view_6 = submod_2[2]
    empty_like_1 = submod_2[3]
    add_5 = submod_2[4]
    del submod_2
    # layers.1.self_attn
    __vllm_inlined_submods__3(
        cat_2,
        cat_3,
        view_6,
        __vllm_consts__[13],
        __vllm_consts__[14],
        arg1_1,
        empty_like_1,
    )
    del arg1_1, cat_2, cat_3, view_6
    # layers.1.self_attn .. norm
    submod_4 = __vllm_submods__[2](
        empty_like_1,
        sym_size_int,
        __vllm_consts__[15],
        add_5,
        __vllm_consts__[16],
        __vllm_consts__[17],
        __vllm_consts__[18],
        __vllm_consts__[19],
    )
    del sym_size_int, empty_like_1, add_5
    return submod_4
