# Stitching source emitted by stitch.codegen (format 4).
# pieces: 5 (3 called through __vllm_submods__, 2 inlined); constants: 0
# graph: sha256:81c147410d455910
import torch

stitch_attention = torch.ops.stitch.attention


def execution_fn(
    l_self_modules_embed_tokens_parameters_weight_,
    s72,
    l_input_ids_,
    l_self_modules_layers_modules_0_modules_input_layernorm_parameters_weight_,
    l_self_modules_layers_modules_0_modules_self_attn_modules_qkv_proj_parameters_weight_,
    l_self_modules_layers_modules_0_modules_self_attn_buffers_inv_freq_,
    s80,
    l_positions_,
    l_self_modules_layers_modules_0_modules_self_attn_buffers_k_cache_,
    l_self_modules_layers_modules_0_modules_self_attn_buffers_v_cache_,
    l_self_modules_layers_modules_0_modules_self_attn_modules_o_proj_parameters_weight_,
    l_self_modules_layers_modules_0_modules_post_attention_layernorm_parameters_weight_,
    l_self_modules_layers_modules_0_modules_mlp_modules_gate_up_proj_parameters_weight_,
    l_self_modules_layers_modules_0_modules_mlp_modules_down_proj_parameters_weight_,
    l_self_modules_layers_modules_1_modules_input_layernorm_parameters_weight_,
    l_self_modules_layers_modules_1_modules_self_attn_modules_qkv_proj_parameters_weight_,
    l_self_modules_layers_modules_1_modules_self_attn_buffers_inv_freq_,
    l_self_modules_layers_modules_1_modules_self_attn_buffers_k_cache_,
    l_self_modules_layers_modules_1_modules_self_attn_buffers_v_cache_,
    l_self_modules_layers_modules_1_modules_self_attn_modules_o_proj_parameters_weight_,
    l_self_modules_layers_modules_1_modules_post_attention_layernorm_parameters_weight_,
    l_self_modules_layers_modules_1_modules_mlp_modules_gate_up_proj_parameters_weight_,
    l_self_modules_layers_modules_1_modules_mlp_modules_down_proj_parameters_weight_,
    l_self_modules_norm_parameters_weight_,
    *,
    __vllm_dispatch__,
):
    # the runnables for this runtime size, chosen once per forward
    submod_0, submod_2, submod_4 = __vllm_dispatch__[s72]
    # embed_tokens .. layers.0.self_attn
    q_2, k_2, v_1, out, x = submod_0(
        l_input_ids_,
        s72,
        l_self_modules_embed_tokens_parameters_weight_,
        l_self_modules_layers_modules_0_modules_input_layernorm_parameters_weight_,
        l_self_modules_layers_modules_0_modules_self_attn_modules_qkv_proj_parameters_weight_,
        l_positions_,
        l_self_modules_layers_modules_0_modules_self_attn_buffers_inv_freq_,
    )
    # layers.0.self_attn
    stitch_attention(
        q_2,
        k_2,
        v_1,
        l_self_modules_layers_modules_0_modules_self_attn_buffers_k_cache_,
        l_self_modules_layers_modules_0_modules_self_attn_buffers_v_cache_,
        l_positions_,
        out,
        0.25,
    )
    del q_2, k_2, v_1
    # layers.0.self_attn .. layers.1.self_attn
    q_5, k_5, v_3, out, x = submod_2(
        out,
        s72,
        l_self_modules_layers_modules_0_modules_self_attn_modules_o_proj_parameters_weight_,
        x,
        l_self_modules_layers_modules_0_modules_post_attention_layernorm_parameters_weight_,
        l_self_modules_layers_modules_0_modules_mlp_modules_gate_up_proj_parameters_weight_,
        l_self_modules_layers_modules_0_modules_mlp_modules_down_proj_parameters_weight_,
        l_self_modules_layers_modules_1_modules_input_layernorm_parameters_weight_,
        l_self_modules_layers_modules_1_modules_self_attn_modules_qkv_proj_parameters_weight_,
        l_positions_,
        l_self_modules_layers_modules_1_modules_self_attn_buffers_inv_freq_,
    )
    # layers.1.self_attn
    stitch_attention(
        q_5,
        k_5,
        v_3,
        l_self_modules_layers_modules_1_modules_self_attn_buffers_k_cache_,
        l_self_modules_layers_modules_1_modules_self_attn_buffers_v_cache_,
        l_positions_,
        out,
        0.25,
    )
    del q_5, k_5, v_3
    # layers.1.self_attn .. norm
    mul_31 = submod_4(
        out,
        s72,
        l_self_modules_layers_modules_1_modules_self_attn_modules_o_proj_parameters_weight_,
        x,
        l_self_modules_layers_modules_1_modules_post_attention_layernorm_parameters_weight_,
        l_self_modules_layers_modules_1_modules_mlp_modules_gate_up_proj_parameters_weight_,
        l_self_modules_layers_modules_1_modules_mlp_modules_down_proj_parameters_weight_,
        l_self_modules_norm_parameters_weight_,
    )
    return (mul_31,)
