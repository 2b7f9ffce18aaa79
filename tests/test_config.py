"""``CompilationConfig``: rejected values, and which fields enter ``compute_hash``."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from typing import Any

import pytest
import torch

from stitch.core.errors import StitchConfigError, StitchRuntimeError
from stitch.runtime import CompilationConfig, CUDAGraphMode, StitchBackend

BAD = [
    ("backend", "tpu", "must be one of"),
    ("compile_sizes", [0], "entry 0 is not a positive int"),
    ("compile_sizes", [4, 4], "duplicate"),
    ("compile_sizes", [True], "entry True is not a positive int"),
    ("compile_sizes", (4.0,), "entry 4.0 is not a positive int"),
    ("compile_sizes", 4, "must be a list"),
    ("compile_sizes", [9000], "exceeds max_num_batched_tokens=8192"),
    (
        "compile_ranges_split_points",
        [8192],
        "must be below max_num_batched_tokens=8192",
    ),
    (
        "compile_ranges_split_points",
        [9000],
        "must be below max_num_batched_tokens=8192",
    ),
    ("compile_ranges_split_points", [16, 16], "duplicate"),
    ("splitting_ops", ["attention"], "is not of the form 'ns::op'"),
    ("splitting_ops", ["stitch::"], "is not of the form 'ns::op'"),
    ("splitting_ops", ["stitch::attention.x.y"], "is not of the form 'ns::op'"),
    ("splitting_ops", [3], "must be a string"),
    ("splitting_ops", "stitch::attention", "must be a list"),
    ("max_num_batched_tokens", 0, "must be an int >= 1"),
    ("max_num_batched_tokens", True, "must be an int >= 1"),
    ("inductor_compile_config", {1: 2}, "must be a dict of Inductor config names"),
    ("compile_sizes_inductor_config", [], "must be a dict of Inductor config names"),
    ("disable_cache", "no", "must be a bool"),
    ("cache_dir", None, "must be a str path"),
    ("debug_dump_path", 3, "must be a str path"),
    ("cudagraph_mode", "sometimes", "is not one of: NONE (0), PIECEWISE (1)"),
    ("cudagraph_mode", True, "not a bool"),
    ("cudagraph_mode", 9, "is not one of"),
    ("cudagraph_num_of_warmups", -1, "must be an int >= 0"),
    ("cudagraph_capture_sizes", [0], "entry 0 is not a positive int"),
    ("max_cudagraph_capture_size", 0, "must be a positive int or None"),
]


@pytest.mark.parametrize(
    "field, value, why", BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD]
)
def test_bad_value_is_rejected_naming_field_and_value(
    field: str, value: Any, why: str
) -> None:
    with pytest.raises(StitchConfigError) as info:
        CompilationConfig(**{field: value})
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert f"{field}={value!r}" in message
    assert why in message


def test_unknown_field_is_rejected_with_the_field_meant() -> None:
    with pytest.raises(
        StitchConfigError, match="no field 'compile_size'; did you mean 'compile_sizes'"
    ):
        CompilationConfig(compile_size=[4])  # type: ignore[call-arg]
    with pytest.raises(
        StitchConfigError, match="no field 'compile_size'; did you mean"
    ):
        StitchBackend(compile_size=[4])
    with pytest.raises(StitchConfigError, match="no field 'zzz'$"):
        CompilationConfig(zzz=1)  # type: ignore[call-arg]


def test_inductor_config_keys_are_checked_when_the_config_is_built() -> None:
    with pytest.raises(
        StitchConfigError,
        match="'max_autotun' is not an option of torch._inductor.config; did you mean 'max_autotune'",
    ):
        CompilationConfig(inductor_compile_config={"max_autotun": True})
    # Nested options are named with a dot, as torch._inductor.config.patch takes them.
    config = CompilationConfig(inductor_compile_config={"triton.cudagraphs": False})
    assert config.inductor_compile_config == {"triton.cudagraphs": False}
    with pytest.raises(
        StitchConfigError,
        match=re.escape(
            "CompilationConfig.compile_sizes_inductor_config={'coordinate_descent': "
            "True}: 'coordinate_descent' is not an option of torch._inductor.config; "
            "did you mean 'coordinate_descent_tuning'"
        ),
    ):
        CompilationConfig(compile_sizes_inductor_config={"coordinate_descent": True})


def test_backend_takes_a_config_or_fields_not_both() -> None:
    with pytest.raises(StitchRuntimeError, match="not both"):
        StitchBackend(CompilationConfig(), backend="eager")
    assert StitchBackend(backend="eager").config.backend == "eager"


@pytest.mark.parametrize(
    "value, mode",
    [
        ("piecewise", CUDAGraphMode.PIECEWISE),
        ("full-and-piecewise", CUDAGraphMode.FULL_AND_PIECEWISE),
        (" Full ", CUDAGraphMode.FULL),
        (0, CUDAGraphMode.NONE),
        (CUDAGraphMode.FULL, CUDAGraphMode.FULL),
    ],
)
def test_cudagraph_mode_accepts_names_and_numbers(
    value: Any, mode: CUDAGraphMode
) -> None:
    assert CompilationConfig(cudagraph_mode=value).cudagraph_mode is mode


def test_sizes_and_split_points_are_sorted() -> None:
    config = CompilationConfig(
        compile_sizes=[8, 2],
        compile_ranges_split_points=[64, 16],
        max_num_batched_tokens=128,
    )
    assert config.compile_sizes == [2, 8]
    assert config.compile_ranges() == [(1, 16), (17, 64), (65, 128)]


# -- compute_hash ----------------------------------------------------------------------

BASE: dict[str, Any] = {
    "compile_sizes": [4, 8],
    "compile_ranges_split_points": [16],
    "max_num_batched_tokens": 64,
    "inductor_compile_config": {"max_autotune": False, "epilogue_fusion": True},
}

# Fields whose value changes the compiled code, each with another value.
CODE_FIELDS = {
    "backend": "eager",
    "splitting_ops": ["stitch::attention", "aten::mm"],
    "compile_sizes": [4],
    "compile_ranges_split_points": [32],
    "max_num_batched_tokens": 128,
    "inductor_compile_config": {"max_autotune": True, "epilogue_fusion": True},
    "compile_sizes_inductor_config": {"coordinate_descent_tuning": True},
}
# Where things are written, and whether the cache is used, change no code.
PLACE_FIELDS = {
    "cache_dir": "/somewhere/else",
    "debug_dump_path": "/tmp/dump",
    "disable_cache": True,
    "cache_url": "redis://127.0.0.1:6379/0",
    "cache_wait_s": 5.0,
    "cache_lease_s": 5.0,
    "cache_store_max_bytes": 1 << 20,
    "tiered_start": True,
    "compile_workers": 3,
    "stitching_source": "/tmp/edited_execution_fn.py",
}


@pytest.mark.parametrize("field", list(CODE_FIELDS))
def test_hash_changes_with_a_compiled_code_field(field: str) -> None:
    before = CompilationConfig(**BASE).compute_hash()
    after = CompilationConfig(**{**BASE, field: CODE_FIELDS[field]}).compute_hash()
    assert after != before


# CUDA graphs wrap compiled pieces at run time; they change no compiled code.
GRAPH_FIELDS = {
    "cudagraph_mode": "FULL",
    "cudagraph_capture_sizes": [1, 2, 4],
    "max_cudagraph_capture_size": 4,
    "cudagraph_num_of_warmups": 2,
    "cudagraph_copy_inputs": True,
    "max_full_cudagraph_size": 2,
    "cudagraph_pad_values": {"positions": -1},
    "cudagraph_forbid_capture_after_startup": True,
    "cudagraph_check_addresses": True,
}


def test_every_field_is_hashed_or_ignored_with_a_reason() -> None:
    """NOTE: [the config hash covers every field]: a new field is in the key unless
    NOT_HASHED says why not, and every ignored field is one of the tables below."""
    from stitch.runtime.config import NOT_HASHED

    fields = {f.name for f in dataclasses.fields(CompilationConfig)}
    assert set(NOT_HASHED) <= fields
    assert set(NOT_HASHED) == set(PLACE_FIELDS) | set(GRAPH_FIELDS)
    hashed = fields - set(NOT_HASHED)
    assert hashed == set(CODE_FIELDS) | {"inductor_passes"}  # test_passes.py: passes
    assert all(reason for reason in NOT_HASHED.values())


def test_a_config_without_options_of_one_size_keeps_its_hash() -> None:
    """The field is hashed only when set: caches written before it existed stay warm."""
    from stitch.runtime.config import CompilationConfig as Config

    config = Config(**BASE)
    assert "compile_sizes_inductor_config" not in config.hash_factors()
    tuned = Config(**BASE, compile_sizes_inductor_config={"max_autotune": True})
    assert tuned.hash_factors()["compile_sizes_inductor_config"] == [
        ("max_autotune", "True")
    ]


def test_a_new_field_enters_the_hash() -> None:
    @dataclasses.dataclass
    class Extended(CompilationConfig):
        new_knob: int = 0

    assert Extended().compute_hash() != Extended(new_knob=1).compute_hash()
    # in the key with its default value too: a cache of the config without it
    # is not taken for one with it
    assert Extended().compute_hash() != CompilationConfig().compute_hash()


@pytest.mark.parametrize("field", list(GRAPH_FIELDS))
def test_hash_ignores_cuda_graph_settings(field: str) -> None:
    before = CompilationConfig(**BASE).compute_hash()
    changed = {**BASE, field: GRAPH_FIELDS[field]}
    if field == "max_full_cudagraph_size":  # only valid with this mode
        changed["cudagraph_mode"] = "FULL_AND_PIECEWISE"
    assert CompilationConfig(**changed).compute_hash() == before


@pytest.mark.parametrize("field", list(PLACE_FIELDS))
def test_hash_ignores_locations(field: str) -> None:
    before = CompilationConfig(**BASE).compute_hash()
    after = CompilationConfig(**{**BASE, field: PLACE_FIELDS[field]}).compute_hash()
    assert after == before


def test_hash_ignores_the_order_values_were_given_in() -> None:
    reordered = {
        **BASE,
        "compile_sizes": [8, 4],
        "inductor_compile_config": {"epilogue_fusion": True, "max_autotune": False},
    }
    assert (
        CompilationConfig(**reordered).compute_hash()
        == CompilationConfig(**BASE).compute_hash()
    )
    ops = ["stitch::attention", "aten::mm"]
    assert (
        CompilationConfig(splitting_ops=ops).compute_hash()
        == CompilationConfig(splitting_ops=ops[::-1]).compute_hash()
    )
    # An op given as a name or as the op object: the same split.
    import stitch.runtime.examples  # noqa: F401 - defines stitch::attention

    packet = torch.ops.stitch.attention
    assert CompilationConfig(splitting_ops=[packet, "aten::mm"]).compute_hash() == (
        CompilationConfig(
            splitting_ops=["stitch::attention", "aten::mm"]
        ).compute_hash()
    )
    # A callable by object or by dotted name: the same split.
    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert CompilationConfig(splitting_ops=[sdpa]).compute_hash() == (
        CompilationConfig(
            splitting_ops=["torch._C._nn.scaled_dot_product_attention"]
        ).compute_hash()
    )


@pytest.mark.slow
def test_hash_is_stable_across_processes() -> None:
    # A fresh interpreter has another PYTHONHASHSEED, other object ids, another
    # import order: none of that may reach the hash.  This process is the other
    # one (one fresh interpreter is enough); the child says it hashes strings
    # differently, so the seeds really differ.
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    script = (
        "from stitch.runtime import CompilationConfig\n"
        f"print(CompilationConfig(**{BASE!r}).compute_hash())\n"
        "print(CompilationConfig().compute_hash())\n"
        "print(hash('stitch'))\n"
    )
    *hashes, str_hash = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": seed},
    ).stdout.split()
    assert str_hash != str(hash("stitch"))
    assert hashes == [
        CompilationConfig(**BASE).compute_hash(),
        CompilationConfig().compute_hash(),
    ]
    assert re.fullmatch(r"[0-9a-f]{64}", CompilationConfig().compute_hash())
