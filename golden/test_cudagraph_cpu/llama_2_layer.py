# Stitching source emitted by stitch.codegen (format 1).
# pieces: 5 (3 called through __vllm_submods__, 2 inlined); constants: 0
# graph: sha256:231bebfdbbbc0691
import torch


def __vllm_inlined_submods__1(
    q_2,
    s72,
    k_2,
    v_1,
    l_self_modules_layers_modules_0_modules_self_attn_buffers_k_cache_,
    l_self_modules_layers_modules_0_modules_self_attn_buffers_v_cache_,
    l_positions_,
    out,
):
    """Inlined piece submod_1 (layers.0.self_attn)."""
    del s72
    torch.ops.stitch.attention(
        q_2,
        k_2,
        v_1,
        l_self_modules_layers_modules_0_modules_self_attn_buffers_k_cache_,
        l_self_modules_layers_modules_0_modules_self_attn_buffers_v_cache_,
        l_positions_,
        out,
        0.25,
    )
    del (
        q_2,
        k_2,
        v_1,
        l_self_modules_layers_modules_0_modules_self_attn_buffers_k_cache_,
        l_self_modules_layers_modules_0_modules_self_attn_buffers_v_cache_,
        l_positions_,
        out,
    )
    return ()


def __vllm_inlined_submods__3(
    q_5,
    s72,
    k_5,
    v_3,
    l_self_modules_layers_modules_1_modules_self_attn_buffers_k_cache_,
    l_self_modules_layers_modules_1_modules_self_attn_buffers_v_cache_,
    l_positions_,
    out_1,
):
    """Inlined piece submod_3 (layers.1.self_attn)."""
    del s72
    torch.ops.stitch.attention(
        q_5,
        k_5,
        v_3,
        l_self_modules_layers_modules_1_modules_self_attn_buffers_k_cache_,
        l_self_modules_layers_modules_1_modules_self_attn_buffers_v_cache_,
        l_positions_,
        out_1,
        0.25,
    )
    del (
        q_5,
        k_5,
        v_3,
        l_self_modules_layers_modules_1_modules_self_attn_buffers_k_cache_,
        l_self_modules_layers_modules_1_modules_self_attn_buffers_v_cache_,
        l_positions_,
        out_1,
    )
    return ()


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
    __vllm_submods__ = __vllm_dispatch__[s72]
    del s80
    submod_0 = __vllm_submods__[0](
        l_input_ids_,
        s72,
        l_self_modules_embed_tokens_parameters_weight_,
        l_self_modules_layers_modules_0_modules_input_layernorm_parameters_weight_,
        l_self_modules_layers_modules_0_modules_self_attn_modules_qkv_proj_parameters_weight_,
        l_positions_,
        l_self_modules_layers_modules_0_modules_self_attn_buffers_inv_freq_,
    )
    del (
        l_self_modules_embed_tokens_parameters_weight_,
        l_input_ids_,
        l_self_modules_layers_modules_0_modules_input_layernorm_parameters_weight_,
        l_self_modules_layers_modules_0_modules_self_attn_modules_qkv_proj_parameters_weight_,
        l_self_modules_layers_modules_0_modules_self_attn_buffers_inv_freq_,
    )
    q_2 = submod_0[0]
    k_2 = submod_0[1]
    v_1 = submod_0[2]
    out = submod_0[3]
    x = submod_0[4]
    del submod_0
    # layers.0.self_attn
    __vllm_inlined_submods__1(
        q_2,
        s72,
        k_2,
        v_1,
        l_self_modules_layers_modules_0_modules_self_attn_buffers_k_cache_,
        l_self_modules_layers_modules_0_modules_self_attn_buffers_v_cache_,
        l_positions_,
        out,
    )
    del (
        l_self_modules_layers_modules_0_modules_self_attn_buffers_k_cache_,
        l_self_modules_layers_modules_0_modules_self_attn_buffers_v_cache_,
        q_2,
        k_2,
        v_1,
    )
    submod_2 = __vllm_submods__[1](
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
    del (
        l_self_modules_layers_modules_0_modules_self_attn_modules_o_proj_parameters_weight_,
        l_self_modules_layers_modules_0_modules_post_attention_layernorm_parameters_weight_,
        l_self_modules_layers_modules_0_modules_mlp_modules_gate_up_proj_parameters_weight_,
        l_self_modules_layers_modules_0_modules_mlp_modules_down_proj_parameters_weight_,
        l_self_modules_layers_modules_1_modules_input_layernorm_parameters_weight_,
        l_self_modules_layers_modules_1_modules_self_attn_modules_qkv_proj_parameters_weight_,
        l_self_modules_layers_modules_1_modules_self_attn_buffers_inv_freq_,
        out,
        x,
    )
    q_5 = submod_2[0]
    k_5 = submod_2[1]
    v_3 = submod_2[2]
    out_1 = submod_2[3]
    x_2 = submod_2[4]
    del submod_2
    # layers.1.self_attn
    __vllm_inlined_submods__3(
        q_5,
        s72,
        k_5,
        v_3,
        l_self_modules_layers_modules_1_modules_self_attn_buffers_k_cache_,
        l_self_modules_layers_modules_1_modules_self_attn_buffers_v_cache_,
        l_positions_,
        out_1,
    )
    del (
        l_positions_,
        l_self_modules_layers_modules_1_modules_self_attn_buffers_k_cache_,
        l_self_modules_layers_modules_1_modules_self_attn_buffers_v_cache_,
        q_5,
        k_5,
        v_3,
    )
    submod_4 = __vllm_submods__[2](
        out_1,
        s72,
        l_self_modules_layers_modules_1_modules_self_attn_modules_o_proj_parameters_weight_,
        x_2,
        l_self_modules_layers_modules_1_modules_post_attention_layernorm_parameters_weight_,
        l_self_modules_layers_modules_1_modules_mlp_modules_gate_up_proj_parameters_weight_,
        l_self_modules_layers_modules_1_modules_mlp_modules_down_proj_parameters_weight_,
        l_self_modules_norm_parameters_weight_,
    )
    del (
        s72,
        l_self_modules_layers_modules_1_modules_self_attn_modules_o_proj_parameters_weight_,
        l_self_modules_layers_modules_1_modules_post_attention_layernorm_parameters_weight_,
        l_self_modules_layers_modules_1_modules_mlp_modules_gate_up_proj_parameters_weight_,
        l_self_modules_layers_modules_1_modules_mlp_modules_down_proj_parameters_weight_,
        l_self_modules_norm_parameters_weight_,
        out_1,
        x_2,
    )
    return (submod_4,)
