# Stitching source emitted by stitch.codegen (format 5).
# pieces: 5 (3 called through __vllm_submods__, 2 inlined); constants: 20
# graph: sha256:e792efe169eddc5e
# __vllm_consts__, set by the loader (slot: graph attribute, in the module reading it: value):
#   [0] _param_constant0, in embed_tokens: Parameter(float32, [128, 64], cpu)
#   [1] _param_constant1, in layers.0.input_layernorm: Parameter(float32, [64], cpu)
#   [2] _param_constant2, in layers.0.self_attn.qkv_proj: Parameter(float32, [192, 64], cpu)
#   [3] _tensor_constant0, in layers.0.self_attn: Tensor(float32, [8], cpu)
#   [4] _tensor_constant1, in layers.0.self_attn: Tensor(float32, [64, 32, 4, 16], cpu)
#   [5] _tensor_constant2, in layers.0.self_attn: Tensor(float32, [64, 32, 4, 16], cpu)
#   [6] _param_constant3, in layers.0.self_attn.o_proj: Parameter(float32, [64, 64], cpu)
#   [7] _param_constant4, in layers.0.post_attention_layernorm: Parameter(float32, [64], cpu)
#   [8] _param_constant5, in layers.0.mlp.gate_up_proj: Parameter(float32, [256, 64], cpu)
#   [9] _param_constant6, in layers.0.mlp.down_proj: Parameter(float32, [64, 128], cpu)
#   [10] _param_constant7, in layers.1.input_layernorm: Parameter(float32, [64], cpu)
#   [11] _param_constant8, in layers.1.self_attn.qkv_proj: Parameter(float32, [192, 64], cpu)
#   [12] _tensor_constant3, in layers.1.self_attn: Tensor(float32, [8], cpu)
#   [13] _tensor_constant4, in layers.1.self_attn: Tensor(float32, [64, 32, 4, 16], cpu)
#   [14] _tensor_constant5, in layers.1.self_attn: Tensor(float32, [64, 32, 4, 16], cpu)
#   [15] _param_constant9, in layers.1.self_attn.o_proj: Parameter(float32, [64, 64], cpu)
#   [16] _param_constant10, in layers.1.post_attention_layernorm: Parameter(float32, [64], cpu)
#   [17] _param_constant11, in layers.1.mlp.gate_up_proj: Parameter(float32, [256, 64], cpu)
#   [18] _param_constant12, in layers.1.mlp.down_proj: Parameter(float32, [64, 128], cpu)
#   [19] _param_constant13, in norm: Parameter(float32, [64], cpu)
import torch

stitch_attention = torch.ops.stitch.attention.default


def execution_fn(arg0_1, arg1_1, *, __vllm_submods__):
    # the compiled pieces, bound to locals once per forward
    submod_0, submod_2, submod_4 = __vllm_submods__
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
    # layers.1.self_attn .. norm
    mul_31 = submod_4(
        empty_like,
        __vllm_consts__[15],
        add_5,
        __vllm_consts__[16],
        __vllm_consts__[17],
        __vllm_consts__[18],
        __vllm_consts__[19],
    )
    return mul_31
