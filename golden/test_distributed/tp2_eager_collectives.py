# Stitching source emitted by stitch.codegen (format 1).
# pieces: 13 (7 called through __vllm_submods__, 6 inlined); constants: 20
# graph: sha256:8f812b12f7cdd922
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


def __vllm_inlined_submods__3(mm_1):
    """Inlined piece submod_3 (layers.0.self_attn.o_proj)."""
    all_reduce = torch.ops._c10d_functional.all_reduce.default(mm_1, "sum", "0")
    del mm_1
    wait_tensor = torch.ops._c10d_functional.wait_tensor.default(all_reduce)
    del all_reduce
    return wait_tensor


def __vllm_inlined_submods__5(mm_3):
    """Inlined piece submod_5 (layers.0.mlp.down_proj)."""
    all_reduce_1 = torch.ops._c10d_functional.all_reduce.default(mm_3, "sum", "0")
    del mm_3
    wait_tensor_1 = torch.ops._c10d_functional.wait_tensor.default(all_reduce_1)
    del all_reduce_1
    return wait_tensor_1


def __vllm_inlined_submods__7(
    cat_2, cat_3, view_6, _tensor_constant4, _tensor_constant5, arg1_1, empty_like_1
):
    """Inlined piece submod_7 (layers.1.self_attn)."""
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


def __vllm_inlined_submods__9(mm_5):
    """Inlined piece submod_9 (layers.1.self_attn.o_proj)."""
    all_reduce_2 = torch.ops._c10d_functional.all_reduce.default(mm_5, "sum", "0")
    del mm_5
    wait_tensor_2 = torch.ops._c10d_functional.wait_tensor.default(all_reduce_2)
    del all_reduce_2
    return wait_tensor_2


def __vllm_inlined_submods__11(mm_7):
    """Inlined piece submod_11 (layers.1.mlp.down_proj)."""
    all_reduce_3 = torch.ops._c10d_functional.all_reduce.default(mm_7, "sum", "0")
    del mm_7
    wait_tensor_3 = torch.ops._c10d_functional.wait_tensor.default(all_reduce_3)
    del all_reduce_3
    return wait_tensor_3


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
    # layers.0.self_attn
    submod_2 = __vllm_submods__[1](empty_like, sym_size_int, __vllm_consts__[6])
    del empty_like
    # layers.0.self_attn.o_proj
    submod_3 = __vllm_inlined_submods__3(submod_2)
    del submod_2
    # layers.0
    submod_4 = __vllm_submods__[2](
        embedding, submod_3, __vllm_consts__[7], __vllm_consts__[8], __vllm_consts__[9]
    )
    del embedding, submod_3
    mm_3 = submod_4[0]
    add_3 = submod_4[1]
    del submod_4
    # layers.0.mlp.down_proj
    submod_5 = __vllm_inlined_submods__5(mm_3)
    del mm_3
    # layers.0 .. layers.1.self_attn
    submod_6 = __vllm_submods__[3](
        add_3,
        submod_5,
        __vllm_consts__[10],
        __vllm_consts__[11],
        sym_size_int,
        arg1_1,
        __vllm_consts__[12],
        __vllm_consts__[12],
    )
    del add_3, submod_5
    cat_2 = submod_6[0]
    cat_3 = submod_6[1]
    view_6 = submod_6[2]
    empty_like_1 = submod_6[3]
    add_5 = submod_6[4]
    del submod_6
    # layers.1.self_attn
    __vllm_inlined_submods__7(
        cat_2,
        cat_3,
        view_6,
        __vllm_consts__[13],
        __vllm_consts__[14],
        arg1_1,
        empty_like_1,
    )
    del arg1_1, cat_2, cat_3, view_6
    # layers.1.self_attn
    submod_8 = __vllm_submods__[4](empty_like_1, sym_size_int, __vllm_consts__[15])
    del sym_size_int, empty_like_1
    # layers.1.self_attn.o_proj
    submod_9 = __vllm_inlined_submods__9(submod_8)
    del submod_8
    # layers.1
    submod_10 = __vllm_submods__[5](
        add_5, submod_9, __vllm_consts__[16], __vllm_consts__[17], __vllm_consts__[18]
    )
    del add_5, submod_9
    mm_7 = submod_10[0]
    add_9 = submod_10[1]
    del submod_10
    # layers.1.mlp.down_proj
    submod_11 = __vllm_inlined_submods__11(mm_7)
    del mm_7
    # layers.1 .. norm
    submod_12 = __vllm_submods__[6](add_9, submod_11, __vllm_consts__[19])
    del add_9, submod_11
    return submod_12
