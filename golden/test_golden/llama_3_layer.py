# Stitching source emitted by stitch.codegen (format 3).
# pieces: 7 (4 called through __vllm_submods__, 3 inlined); constants: 29
# graph: sha256:339bc9ab4e1a5f66
import torch

stitch_attention = torch.ops.stitch.attention.default


def execution_fn(arg0_1, arg1_1, *, __vllm_submods__):
    # the compiled pieces, bound to locals once per forward
    submod_0, submod_2, submod_4, submod_6 = __vllm_submods__
    # embed_tokens .. layers.0.self_attn
    cat, cat_1, view_2, empty_like, embedding = submod_0(
        __vllm_consts__[0],
        arg0_1,
        __vllm_consts__[1],
        __vllm_consts__[2],
        arg1_1,
        __vllm_consts__[3],
        __vllm_consts__[3],
    )
    # layers.0.self_attn
    stitch_attention(
        cat,
        cat_1,
        view_2,
        __vllm_consts__[4],
        __vllm_consts__[5],
        arg1_1,
        empty_like,
        0.25,
    )
    del cat, cat_1, view_2
    # layers.0.self_attn .. layers.1.self_attn
    cat_2, cat_3, view_6, empty_like, add_5 = submod_2(
        empty_like,
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
    del embedding
    # layers.1.self_attn
    stitch_attention(
        cat_2,
        cat_3,
        view_6,
        __vllm_consts__[13],
        __vllm_consts__[14],
        arg1_1,
        empty_like,
        0.25,
    )
    del cat_2, cat_3, view_6
    # layers.1.self_attn .. layers.2.self_attn
    cat_4, cat_5, view_10, empty_like, add_5 = submod_4(
        empty_like,
        __vllm_consts__[15],
        add_5,
        __vllm_consts__[16],
        __vllm_consts__[17],
        __vllm_consts__[18],
        __vllm_consts__[19],
        __vllm_consts__[20],
        arg1_1,
        __vllm_consts__[21],
        __vllm_consts__[21],
    )
    # layers.2.self_attn
    stitch_attention(
        cat_4,
        cat_5,
        view_10,
        __vllm_consts__[22],
        __vllm_consts__[23],
        arg1_1,
        empty_like,
        0.25,
    )
    del cat_4, cat_5, view_10
    # layers.2.self_attn .. norm
    mul_46 = submod_6(
        empty_like,
        __vllm_consts__[24],
        add_5,
        __vllm_consts__[25],
        __vllm_consts__[26],
        __vllm_consts__[27],
        __vllm_consts__[28],
    )
    return mul_46
