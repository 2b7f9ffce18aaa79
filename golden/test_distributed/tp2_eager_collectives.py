# Stitching source emitted by stitch.codegen (format 5).
# pieces: 13 (7 called through __vllm_submods__, 6 inlined); constants: 20
# graph: sha256:8f812b12f7cdd922
# __vllm_consts__, set by the loader (slot: graph attribute, in the module reading it: value):
#   [0] _param_constant0, in embed_tokens: Parameter(float32, [128, 64], cpu)
#   [1] _param_constant1, in layers.0.input_layernorm: Parameter(float32, [64], cpu)
#   [2] _param_constant2, in layers.0.self_attn.qkv_proj: Parameter(float32, [96, 64], cpu)
#   [3] _tensor_constant0, in layers.0.self_attn: Tensor(float32, [8], cpu)
#   [4] _tensor_constant1, in layers.0.self_attn: Tensor(float32, [32, 16, 2, 16], cpu)
#   [5] _tensor_constant2, in layers.0.self_attn: Tensor(float32, [32, 16, 2, 16], cpu)
#   [6] _param_constant3, in layers.0.self_attn.o_proj: Parameter(float32, [64, 32], cpu)
#   [7] _param_constant4, in layers.0.post_attention_layernorm: Parameter(float32, [64], cpu)
#   [8] _param_constant5, in layers.0.mlp.gate_up_proj: Parameter(float32, [128, 64], cpu)
#   [9] _param_constant6, in layers.0.mlp.down_proj: Parameter(float32, [64, 64], cpu)
#   [10] _param_constant7, in layers.1.input_layernorm: Parameter(float32, [64], cpu)
#   [11] _param_constant8, in layers.1.self_attn.qkv_proj: Parameter(float32, [96, 64], cpu)
#   [12] _tensor_constant3, in layers.1.self_attn: Tensor(float32, [8], cpu)
#   [13] _tensor_constant4, in layers.1.self_attn: Tensor(float32, [32, 16, 2, 16], cpu)
#   [14] _tensor_constant5, in layers.1.self_attn: Tensor(float32, [32, 16, 2, 16], cpu)
#   [15] _param_constant9, in layers.1.self_attn.o_proj: Parameter(float32, [64, 32], cpu)
#   [16] _param_constant10, in layers.1.post_attention_layernorm: Parameter(float32, [64], cpu)
#   [17] _param_constant11, in layers.1.mlp.gate_up_proj: Parameter(float32, [128, 64], cpu)
#   [18] _param_constant12, in layers.1.mlp.down_proj: Parameter(float32, [64, 64], cpu)
#   [19] _param_constant13, in norm: Parameter(float32, [64], cpu)
import torch

stitch_attention = torch.ops.stitch.attention.default
_c10d_functional_all_reduce = torch.ops._c10d_functional.all_reduce.default
_c10d_functional_wait_tensor = torch.ops._c10d_functional.wait_tensor.default


def __vllm_inlined_submods__3(mm_1):
    """Inlined piece submod_3 (layers.0.self_attn.o_proj) and 3 identical pieces."""
    all_reduce = _c10d_functional_all_reduce(mm_1, "sum", "0")
    wait_tensor = _c10d_functional_wait_tensor(all_reduce)
    return wait_tensor


def execution_fn(arg0_1, arg1_1, *, __vllm_submods__):
    # the compiled pieces, bound to locals once per forward
    submod_0, submod_2, submod_4, submod_6, submod_8, submod_10, submod_12 = (
        __vllm_submods__
    )
    # embed_tokens .. layers.0.self_attn
    cat, cat_1, view_2, empty_like, sym_size_int, embedding = submod_0(
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
    # layers.0.self_attn .. layers.0.self_attn.o_proj
    mm_1 = submod_2(empty_like, sym_size_int, __vllm_consts__[6])
    del empty_like
    # layers.0.self_attn.o_proj
    wait_tensor = __vllm_inlined_submods__3(mm_1)
    del mm_1
    # layers.0 .. layers.0.mlp.down_proj
    mm_3, add_3 = submod_4(
        embedding,
        wait_tensor,
        __vllm_consts__[7],
        __vllm_consts__[8],
        __vllm_consts__[9],
    )
    del embedding, wait_tensor
    # layers.0.mlp.down_proj
    wait_tensor_1 = __vllm_inlined_submods__3(mm_3)
    del mm_3
    # layers.0 .. layers.1.self_attn
    cat_2, cat_3, view_6, empty_like_1, add_3 = submod_6(
        add_3,
        wait_tensor_1,
        __vllm_consts__[10],
        __vllm_consts__[11],
        sym_size_int,
        arg1_1,
        __vllm_consts__[12],
        __vllm_consts__[12],
    )
    del wait_tensor_1
    # layers.1.self_attn
    stitch_attention(
        cat_2,
        cat_3,
        view_6,
        __vllm_consts__[13],
        __vllm_consts__[14],
        arg1_1,
        empty_like_1,
        0.25,
    )
    del cat_2, cat_3, view_6
    # layers.1.self_attn .. layers.1.self_attn.o_proj
    mm_5 = submod_8(empty_like_1, sym_size_int, __vllm_consts__[15])
    del sym_size_int, empty_like_1
    # layers.1.self_attn.o_proj
    wait_tensor_2 = __vllm_inlined_submods__3(mm_5)
    del mm_5
    # layers.1 .. layers.1.mlp.down_proj
    mm_7, add_3 = submod_10(
        add_3,
        wait_tensor_2,
        __vllm_consts__[16],
        __vllm_consts__[17],
        __vllm_consts__[18],
    )
    del wait_tensor_2
    # layers.1.mlp.down_proj
    wait_tensor_3 = __vllm_inlined_submods__3(mm_7)
    del mm_7
    # layers.1 .. norm
    mul_56 = submod_12(add_3, wait_tensor_3, __vllm_consts__[19])
    return mul_56
