# Stitching source emitted by stitch.codegen (format 5).
# pieces: 5 (3 called through __vllm_dispatch__, 2 inlined); constants: 0
# graph: sha256:07bf889a3ea705e6
# parameters (name: module path (Dynamo's name), or size: the input dimension it is):
#   embed_tokens_weight: self.embed_tokens.weight (l_self_modules_embed_tokens_parameters_weight_)
#   num_tokens: size input_ids.size(0)
#   input_ids: input_ids (l_input_ids_)
#   layers_0_input_layernorm_weight: self.layers.0.input_layernorm.weight (l_self_modules_layers_modules_0_modules_input_layernorm_parameters_weight_)
#   layers_0_self_attn_qkv_proj_weight: self.layers.0.self_attn.qkv_proj.weight (l_self_modules_layers_modules_0_modules_self_attn_modules_qkv_proj_parameters_weight_)
#   layers_0_self_attn_inv_freq: self.layers.0.self_attn.inv_freq (l_self_modules_layers_modules_0_modules_self_attn_buffers_inv_freq_)
#   positions_len: size positions.size(0)
#   positions: positions (l_positions_)
#   layers_0_self_attn_k_cache: self.layers.0.self_attn.k_cache (l_self_modules_layers_modules_0_modules_self_attn_buffers_k_cache_)
#   layers_0_self_attn_v_cache: self.layers.0.self_attn.v_cache (l_self_modules_layers_modules_0_modules_self_attn_buffers_v_cache_)
#   layers_0_self_attn_o_proj_weight: self.layers.0.self_attn.o_proj.weight (l_self_modules_layers_modules_0_modules_self_attn_modules_o_proj_parameters_weight_)
#   layers_0_post_attention_layernorm_weight: self.layers.0.post_attention_layernorm.weight (l_self_modules_layers_modules_0_modules_post_attention_layernorm_parameters_weight_)
#   layers_0_mlp_gate_up_proj_weight: self.layers.0.mlp.gate_up_proj.weight (l_self_modules_layers_modules_0_modules_mlp_modules_gate_up_proj_parameters_weight_)
#   layers_0_mlp_down_proj_weight: self.layers.0.mlp.down_proj.weight (l_self_modules_layers_modules_0_modules_mlp_modules_down_proj_parameters_weight_)
#   layers_1_input_layernorm_weight: self.layers.1.input_layernorm.weight (l_self_modules_layers_modules_1_modules_input_layernorm_parameters_weight_)
#   layers_1_self_attn_qkv_proj_weight: self.layers.1.self_attn.qkv_proj.weight (l_self_modules_layers_modules_1_modules_self_attn_modules_qkv_proj_parameters_weight_)
#   layers_1_self_attn_inv_freq: self.layers.1.self_attn.inv_freq (l_self_modules_layers_modules_1_modules_self_attn_buffers_inv_freq_)
#   layers_1_self_attn_k_cache: self.layers.1.self_attn.k_cache (l_self_modules_layers_modules_1_modules_self_attn_buffers_k_cache_)
#   layers_1_self_attn_v_cache: self.layers.1.self_attn.v_cache (l_self_modules_layers_modules_1_modules_self_attn_buffers_v_cache_)
#   layers_1_self_attn_o_proj_weight: self.layers.1.self_attn.o_proj.weight (l_self_modules_layers_modules_1_modules_self_attn_modules_o_proj_parameters_weight_)
#   layers_1_post_attention_layernorm_weight: self.layers.1.post_attention_layernorm.weight (l_self_modules_layers_modules_1_modules_post_attention_layernorm_parameters_weight_)
#   layers_1_mlp_gate_up_proj_weight: self.layers.1.mlp.gate_up_proj.weight (l_self_modules_layers_modules_1_modules_mlp_modules_gate_up_proj_parameters_weight_)
#   layers_1_mlp_down_proj_weight: self.layers.1.mlp.down_proj.weight (l_self_modules_layers_modules_1_modules_mlp_modules_down_proj_parameters_weight_)
#   norm_weight: self.norm.weight (l_self_modules_norm_parameters_weight_)
import torch

stitch_attention = torch.ops.stitch.attention


def execution_fn(
    embed_tokens_weight,
    num_tokens,
    input_ids,
    layers_0_input_layernorm_weight,
    layers_0_self_attn_qkv_proj_weight,
    layers_0_self_attn_inv_freq,
    positions_len,
    positions,
    layers_0_self_attn_k_cache,
    layers_0_self_attn_v_cache,
    layers_0_self_attn_o_proj_weight,
    layers_0_post_attention_layernorm_weight,
    layers_0_mlp_gate_up_proj_weight,
    layers_0_mlp_down_proj_weight,
    layers_1_input_layernorm_weight,
    layers_1_self_attn_qkv_proj_weight,
    layers_1_self_attn_inv_freq,
    layers_1_self_attn_k_cache,
    layers_1_self_attn_v_cache,
    layers_1_self_attn_o_proj_weight,
    layers_1_post_attention_layernorm_weight,
    layers_1_mlp_gate_up_proj_weight,
    layers_1_mlp_down_proj_weight,
    norm_weight,
    *,
    __vllm_dispatch__,
):
    # the runnables for this runtime size, chosen once per forward
    submod_0, submod_2, submod_4 = __vllm_dispatch__[num_tokens]
    # embed_tokens .. layers.0.self_attn.qkv_proj
    q_2, k_2, v_1, out, x = submod_0(
        num_tokens,
        positions_len,
        input_ids,
        embed_tokens_weight,
        layers_0_input_layernorm_weight,
        layers_0_self_attn_qkv_proj_weight,
        positions,
        layers_0_self_attn_inv_freq,
    )
    # layers.0.self_attn
    stitch_attention(
        q_2,
        k_2,
        v_1,
        layers_0_self_attn_k_cache,
        layers_0_self_attn_v_cache,
        positions,
        out,
        0.25,
    )
    del q_2, k_2, v_1
    # layers.0.self_attn .. layers.1.self_attn
    q_5, k_5, v_3, out, x = submod_2(
        out,
        num_tokens,
        positions_len,
        layers_0_self_attn_o_proj_weight,
        x,
        layers_0_post_attention_layernorm_weight,
        layers_0_mlp_gate_up_proj_weight,
        layers_0_mlp_down_proj_weight,
        layers_1_input_layernorm_weight,
        layers_1_self_attn_qkv_proj_weight,
        positions,
        layers_1_self_attn_inv_freq,
    )
    # layers.1.self_attn
    stitch_attention(
        q_5,
        k_5,
        v_3,
        layers_1_self_attn_k_cache,
        layers_1_self_attn_v_cache,
        positions,
        out,
        0.25,
    )
    del q_5, k_5, v_3
    # layers.1.self_attn .. norm
    mul_31 = submod_4(
        out,
        num_tokens,
        positions_len,
        layers_1_self_attn_o_proj_weight,
        x,
        layers_1_post_attention_layernorm_weight,
        layers_1_mlp_gate_up_proj_weight,
        layers_1_mlp_down_proj_weight,
        norm_weight,
    )
    return (mul_31,)
