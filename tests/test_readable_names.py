"""The emitted function's parameters are named after the model's paths (NOTE:
[names from the model's paths] in codegen/readable.py), and nothing that runs
depends on those names: old and new emitted files of one graph compute alike
(here on a file renamed back; tests/test_cudagraph_cpu.py's
test_format_4_file_and_the_golden_compute_alike runs the file the code generator
really wrote before readable names, tests/fixtures/emitted_format4/)."""

from __future__ import annotations

import builtins
import keyword
import re

import pytest
import torch.fx as fx
from test_golden import assert_same_outputs, run

from stitch.codegen.readable import (
    MAX_CHARS,
    provenance,
    readable_names,
    source_path,
)
from stitch.runtime import compile_execution_fn

from models import emit_case

DYNAMO_Q = (
    "l_self_modules_model_modules_layers_modules_0_modules_self_attn_"
    "modules_q_proj_parameters_weight_"
)


def placeholders(*names: str) -> list[fx.Node]:
    graph = fx.Graph()
    return [graph.placeholder(n) for n in names]


def test_dynamo_noise_goes_and_the_shared_first_step_too() -> None:
    names = readable_names(
        placeholders(
            "l_kwargs_input_ids_",
            DYNAMO_Q,
            "l_self_modules_model_modules_norm_parameters_weight_",
            "l_self_modules_lm_head_parameters_weight_",
            "s52",
            "arg0_1",
        )
    )
    assert names == {
        "l_kwargs_input_ids_": "input_ids",
        DYNAMO_Q: "layers_0_self_attn_q_proj_weight",
        "l_self_modules_model_modules_norm_parameters_weight_": "norm_weight",
        "l_self_modules_lm_head_parameters_weight_": "lm_head_weight",
    }


def test_long_paths_keep_their_numbers_and_last_word() -> None:
    long = (
        "l_self_modules_model_modules_layers_modules_11_modules_block_sparse_moe_"
        "modules_experts_modules_7_modules_post_attention_layernorm_parameters_weight_"
    )
    (name,) = readable_names(placeholders(long)).values()
    assert len(name) <= MAX_CHARS
    assert name.startswith("model_layers_11_") and name.endswith("_weight")
    assert "_7_" in name
    # Deterministic: the graph alone decides.
    assert readable_names(placeholders(long)) == readable_names(placeholders(long))


def test_a_first_step_is_kept_where_dropping_it_would_clash() -> None:
    names = readable_names(
        placeholders(
            "l_self_modules_model_modules_norm_parameters_weight_",
            "l_self_modules_model_modules_fc_parameters_weight_",
            "l_self_modules_norm_parameters_weight_",
        )
    )
    assert names["l_self_modules_model_modules_norm_parameters_weight_"] == (
        "model_norm_weight"
    )
    assert names["l_self_modules_model_modules_fc_parameters_weight_"] == "fc_weight"


def test_names_are_unique_and_never_keywords_or_builtins() -> None:
    # ``type`` and ``input`` are builtins, ``lambda`` a keyword; two sources
    # read alike once the noise goes.
    case = emit_case("dynamo_names")
    gm = case.split_gm
    graph = fx.Graph()
    for name in ("l_type_", "l_input_", "l_lambda_", "l_kwargs_x_", "l_x_"):
        graph.placeholder(name)
    graph.output(None)
    from stitch.codegen import generate_execution_code

    code, _, _ = generate_execution_code(fx.GraphModule(gm, graph))
    signature = re.search(r"def execution_fn\(([^)]*)\)", code, re.S)
    assert signature is not None
    params = [p.strip() for p in signature.group(1).split(",") if p.strip()][:5]
    assert len(set(params)) == 5, params
    for p in params:
        assert p.isidentifier() and not keyword.iskeyword(p), p
        assert p not in dir(builtins), p


def old_style(code: str) -> str:
    """``code`` roughly as the code generator wrote it before readable names: each
    parameter under Dynamo's name (read back from the header's table).  The
    dynamo_names graph postdates that code generator, so it has no real old file."""
    table = re.findall(r"^#   (\w+): .* \((\w+)\)$", code, re.M)
    assert table
    body = "\n".join(ln for ln in code.splitlines() if not ln.startswith("#   "))
    for new, old in table:
        body = re.sub(rf"\b{new}\b", old, body)
    return body + "\n"


def test_old_and_new_emitted_files_of_one_graph_compute_alike() -> None:
    emitted = emit_case("dynamo_names")
    new = emitted.code
    old = old_style(new)
    assert (
        "layers_0_mlp_up_proj_weight" in new
        and "_modules_" not in new.split("import torch")[1]
    )
    assert (
        "l_self_modules_model_modules_layers_modules_0" in old.split("import torch")[1]
    )
    pieces = dict(emitted.split_gm.named_children())
    fns = [
        compile_execution_fn(code, pieces, emitted.submod_names, emitted.consts)
        for code in (old, new)
    ]
    for seed in emitted.case.seeds:
        inputs = emitted.case.make_inputs(seed)
        a, b = (run(emitted.case, fn, inputs) for fn in fns)
        assert_same_outputs(a, b, exact=True)


@pytest.mark.parametrize("name", ["input_ids", "tokens"])
def test_size_symbols_named_by_the_token_ids(name: str) -> None:
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    env = ShapeEnv()
    s0 = env.create_unbacked_symint()
    graph = fx.Graph()
    size = graph.placeholder("s0")
    ids = graph.placeholder(f"l_kwargs_{name}_")
    size.meta["example_value"] = s0
    # A 1-D tensor of s0 token ids (only its shape is read).
    ids.meta["example_value"] = type("Ids", (), {"shape": (s0,)})()
    assert readable_names([size, ids]) == {
        f"l_kwargs_{name}_": name,
        "s0": "num_tokens",
    }


def test_source_path_reads_only_dynamo_names() -> None:
    assert source_path("arg0_1") is None and source_path("s52") is None
    # torch 2.11 names a config attribute read through object.__getattribute__
    # after the call around it.
    wrapped = "object_getattribute_l_self_config_final_logit_softcapping_"
    assert source_path(wrapped) == ("self", "config_final_logit_softcapping")
    assert source_path(DYNAMO_Q) == ("self", "model_layers_0_self_attn_q_proj_weight")


def test_a_forward_behind_a_wrapper_keeps_the_models_names() -> None:
    """transformers 5.24 wraps every model's forward in a ``(*args, **kwargs)``
    decorator, so Dynamo's sources start at ``L['args'][0]``, not
    ``L['self']`` (NOTE: [the compiled module under a wrapper] in
    codegen/pieces.py): the emitted names and the pieces' module paths are the
    model's all the same, and a tensor passed positionally keeps ``args``."""
    import functools

    import torch

    from stitch.runtime import StitchBackend

    def wrapped(forward):
        @functools.wraps(forward)
        def wrapper(*args, **kwargs):
            return forward(*args, **kwargs)

        return wrapper

    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj = torch.nn.Linear(8, 8)
            self.norm = torch.nn.LayerNorm(8)

        @wrapped
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = self.q_proj(x).view(1, 2, -1, 4)
            out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
            return self.norm(out.reshape(x.shape))

    torch._dynamo.reset()
    model = Attention().eval()
    backend = StitchBackend(backend="eager", disable_cache=True)
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x))
    (compiled,) = backend.compiled
    source = compiled.code
    # The wrapper made the module L['args'][0]: Dynamo's names say so ...
    assert "l_args_0_modules_q_proj_parameters_weight_" in source
    # ... and the emitted ones do not.
    params = re.search(r"def \w+\(([^)]*)\)", source).group(1)
    assert "q_proj_weight" in params and "norm_weight" in params
    assert "args_0" not in params
    assert "self.q_proj.weight" in source and "args.0" not in source
    assert "# q_proj" in source or "q_proj .." in source
    assert "L['args']" not in source and "0.q_proj" not in source


def _size_graph(sources: bool, *order: str) -> list[fx.Node]:
    """The README model's graph inputs as Dynamo gives them (mark_unbacked on
    dim 0 of input_ids and positions): sizes u0 (input_ids') and u1
    (positions'), both carrying u1 once Dynamo found them equal, in ``order``;
    with ``sources``, each placeholder's grapharg as Dynamo records it."""
    import torch
    from torch._dynamo.source import LocalSource, TensorProperty, TensorPropertySource
    from torch._dynamo.variables.builder import GraphArg
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    env = ShapeEnv()
    env.create_unbacked_symint()
    u1 = env.create_unbacked_symint()
    with FakeTensorMode(shape_env=env):
        ids = torch.empty(u1, dtype=torch.int64)
        positions = torch.empty(u1, dtype=torch.int64)
    inputs = {
        "u0": (
            u1,
            TensorPropertySource(LocalSource("input_ids"), TensorProperty.SIZE, 0),
        ),
        "l_input_ids_": (ids, LocalSource("input_ids")),
        "u1": (
            u1,
            TensorPropertySource(LocalSource("positions"), TensorProperty.SIZE, 0),
        ),
        "l_positions_": (positions, LocalSource("positions")),
    }
    graph = fx.Graph()
    nodes = []
    for name in order:
        value, source = inputs[name]
        node = graph.placeholder(name)
        node.meta["example_value"] = value
        if sources:
            tensor = isinstance(value, torch.Tensor)
            node.meta["grapharg"] = GraphArg(
                source, value, False, value if tensor else None, is_tensor=tensor
            )
        nodes.append(node)
    return nodes


@pytest.mark.parametrize(
    "order",
    [
        ("u0", "l_input_ids_", "u1", "l_positions_"),  # the README model's
        ("u1", "l_positions_", "u0", "l_input_ids_"),
    ],
)
def test_every_size_is_named_by_its_source_with_unified_symbols(
    order: tuple[str, ...],
) -> None:
    """NOTE: [every size gets a name]: u0 and u1 carry one expression; each is
    named by the tensor Dynamo took it from, input_ids before positions in any
    graph order, and the header says which dimension it is, not the symbol."""
    nodes = _size_graph(True, *order)
    names = readable_names(nodes)
    assert names["u0"] == "num_tokens" and names["u1"] == "positions_len"
    rows = provenance(nodes, names)
    assert "  num_tokens: size input_ids.size(0)" in rows
    assert "  positions_len: size positions.size(0)" in rows
    assert not re.search(r"\b[su][0-9]+\b", "\n".join(rows)), rows


def test_sizes_without_sources_follow_the_example_shapes() -> None:
    """A graph without Dynamo's sources (make_fx's) names its sizes from the
    tensors' example shapes, the token ids first; a size no tensor has is
    size_<k>."""
    import torch
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    nodes = _size_graph(False, "u1", "l_positions_", "u0", "l_input_ids_")
    lone = fx.Graph().placeholder("s9")
    lone.meta["example_value"] = ShapeEnv().create_unbacked_symint()
    assert isinstance(lone.meta["example_value"], torch.SymInt)
    names = readable_names([*nodes, lone])
    # Both carry u1: input_ids' dimension takes the first in graph order.
    assert names["u1"] == "num_tokens" and names["u0"] == "positions_len"
    assert names["s9"] == "size_0"
    assert "  size_0: size" in provenance([*nodes, lone], names)
