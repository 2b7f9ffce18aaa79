# Stitching source emitted by stitch.codegen (format 1).
# pieces: 5 (3 called through __vllm_submods__, 2 inlined); constants: 20
# graph: sha256:b7b60110f8a7ca7d
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
    getitem = submod_0[0]
    getitem_1 = submod_0[1]
    getitem_2 = submod_0[2]
    getitem_3 = submod_0[3]
    getitem_4 = submod_0[4]
    getitem_5 = submod_0[5]
    del submod_0
    # layers.0.self_attn
    __vllm_inlined_submods__1(
        getitem,
        getitem_1,
        getitem_2,
        __vllm_consts__[4],
        __vllm_consts__[5],
        arg1_1,
        getitem_3,
    )
    del getitem, getitem_1, getitem_2
    # layers.0.self_attn .. layers.1.self_attn
    submod_2 = __vllm_submods__[1](
        getitem_3,
        getitem_4,
        __vllm_consts__[6],
        getitem_5,
        __vllm_consts__[7],
        __vllm_consts__[8],
        __vllm_consts__[9],
        __vllm_consts__[10],
        __vllm_consts__[11],
        arg1_1,
        __vllm_consts__[12],
        __vllm_consts__[12],
    )
    del getitem_3, getitem_5
    getitem_6 = submod_2[0]
    getitem_7 = submod_2[1]
    getitem_8 = submod_2[2]
    getitem_9 = submod_2[3]
    getitem_10 = submod_2[4]
    del submod_2
    # layers.1.self_attn
    __vllm_inlined_submods__3(
        getitem_6,
        getitem_7,
        getitem_8,
        __vllm_consts__[13],
        __vllm_consts__[14],
        arg1_1,
        getitem_9,
    )
    del arg1_1, getitem_6, getitem_7, getitem_8
    # layers.1.self_attn .. norm
    submod_4 = __vllm_submods__[2](
        getitem_9,
        getitem_4,
        __vllm_consts__[15],
        getitem_10,
        __vllm_consts__[16],
        __vllm_consts__[17],
        __vllm_consts__[18],
        __vllm_consts__[19],
    )
    del getitem_4, getitem_9, getitem_10
    return submod_4
