# Stitching source emitted by stitch.codegen (format 5).
# pieces: 5 (3 called through __vllm_submods__, 2 inlined); constants: 0
# graph: sha256:32b5ab1ae2584dec
# parameters (name: module path (Dynamo's name), or size: the input dimension it is):
#   hidden_states: hidden_states (l_kwargs_hidden_states_)
#   layers_0_mlp_up_proj_weight: self.model.layers.0.mlp.up_proj.weight (l_self_modules_model_modules_layers_modules_0_modules_mlp_modules_up_proj_parameters_weight_)
#   layers_1_mlp_up_proj_weight: self.model.layers.1.mlp.up_proj.weight (l_self_modules_model_modules_layers_modules_1_modules_mlp_modules_up_proj_parameters_weight_)
#   norm_weight: self.model.norm.weight (l_self_modules_model_modules_norm_parameters_weight_)
#   norm_bias: self.model.norm.bias (l_self_modules_model_modules_norm_parameters_bias_)
#   lm_head_weight: self.lm_head.weight (l_self_modules_lm_head_parameters_weight_)
import torch

stitchtest_scale = torch.ops.stitchtest.scale


def execution_fn(
    hidden_states,
    layers_0_mlp_up_proj_weight,
    layers_1_mlp_up_proj_weight,
    norm_weight,
    norm_bias,
    lm_head_weight,
    *,
    __vllm_submods__,
):
    # the compiled pieces, bound to locals once per forward
    submod_0, submod_2, submod_4 = __vllm_submods__
    linear = submod_0(hidden_states, layers_0_mlp_up_proj_weight)
    scale = stitchtest_scale(linear, 0.5)
    del linear
    linear_1, add = submod_2(hidden_states, scale, layers_1_mlp_up_proj_weight)
    del scale
    scale_1 = stitchtest_scale(linear_1, 0.5)
    del linear_1
    linear_2 = submod_4(add, scale_1, norm_weight, norm_bias, lm_head_weight)
    return linear_2
