"""The Triton kernels of ``stitch::attention`` and ``stitch::paged_attention``
saved as cubins and launched without Triton: prebuilt kernels (NOTE: [an op's
Triton kernel without Triton] in runtime/kernels/static_launch.py).

On CPU the kernel is compiled for an H100 (sm_90) by Triton itself, through the
same binder and packing its JIT uses on a GPU, so what is saved is what a CUDA
process saves: the launch facts are checked against torch's own static
launcher, the key against Triton's own specialization, and the files against
damage.  Launching a prebuilt cubin needs a GPU (marked ``cuda``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from stitch.core.errors import StitchError
from stitch.runtime.kernels import kernel_records, static_launch
from stitch.runtime.kernels.attention import AttentionCall
from stitch.runtime.store import codec, location
from stitch.runtime.store.records import OpKernelRecord
from stitch.runtime.store.shared.units import local_units
from stitch.runtime.store.trust import StitchCacheTrustError

SM90 = ("cuda", 90, 32)


def attention_call(
    *,
    window: int = 0,
    sinks: bool = False,
    offset: int = 0,
    dtype: torch.dtype = torch.bfloat16,
) -> AttentionCall:
    """CPU tensors of one decode step: 4 sequences, 8 heads over 2 KV heads, dim 64;
    ``offset``: elements ``positions`` starts past an aligned allocation."""
    q = torch.randn(4, 8, 64).to(dtype)
    qkv = torch.randn(4, 3, 2, 64).to(dtype)
    caches = [torch.zeros(5, 128, 2, 64, dtype=dtype) for _ in "kv"]
    positions = torch.arange(4 + offset)[offset:]
    out = torch.empty_like(q)
    extra = torch.ones(8) if sinks else None
    return AttentionCall(
        q, qkv[:, 1], qkv[:, 2], *caches, positions, out, 0.125, extra, 0.0, window
    )


def triton_for_sm90() -> tuple[Any, Any, Any]:
    """Triton's compile entry, its CUDA backend for sm_90, and ASTSource (skips
    where Triton or its CUDA backend is missing)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    try:
        target = GPUTarget(*SM90)
        backend = make_backend(target)
    except Exception as exc:  # noqa: BLE001 - no CUDA backend in this Triton
        pytest.skip(f"Triton cannot target CUDA here ({exc})")
    return triton, (target, backend), ASTSource


def specialize(call: AttentionCall) -> tuple[Any, ...]:
    """Stitch's key for ``call``, and Triton's own binding of the same arguments
    (its specialization, the bound arguments and options), as the JIT makes them."""
    from triton.runtime.jit import create_function_from_signature

    from stitch.runtime.kernels import triton_attention
    from stitch.runtime.kernels.triton_attention_kernel import decode_attention_kernel

    _, (_, backend), _ = triton_for_sm90()
    grid, args, constexprs = triton_attention.kernel_arguments(call)
    key = triton_attention.specialization_key(0, args, constexprs)
    fn = decode_attention_kernel
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(zip(triton_attention.CONSTEXPRS, constexprs, strict=True))
    kwargs["debug"] = False
    bound, specialization, options = binder(*args, **kwargs)
    return key, specialization, (kwargs, bound, options)


def specialize_paged(case: dict[str, Any]) -> tuple[Any, ...]:
    """As :func:`specialize`, for ``stitch::paged_attention`` on a batch of
    tests/test_hf_paged_triton.py (``case``: ``paged_case``'s arguments)."""
    from test_hf_paged_triton import paged_case
    from triton.runtime.jit import create_function_from_signature

    from stitch.runtime.kernels import triton_paged
    from stitch.runtime.kernels.paged_attention import PagedCall
    from stitch.runtime.kernels.triton_paged_kernel import paged_attention_kernel

    _, (_, backend), _ = triton_for_sm90()
    (q, k, v, write, read, cu_q, cu_k, k_cache, v_cache, out), scalars = paged_case(
        **case
    )
    call = PagedCall(q, k, v, k_cache, v_cache, write, read, cu_q, cu_k, out, *scalars)
    assert triton_paged.kernel_supports(call)
    _, args, constexprs = triton_paged.kernel_arguments(call)
    key = triton_paged.specialization_key(0, args, constexprs)
    fn = paged_attention_kernel
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {**constexprs, "debug": False}
    bound, specialization, options = binder(*args, **kwargs)
    return key, specialization, (kwargs, bound, options)


def compile_sm90(
    call: AttentionCall | dict[str, Any],
) -> tuple[Any, tuple[Any, ...]]:
    """Triton's ``CompiledKernel`` on an H100, and Stitch's key for it: of
    ``stitch::attention`` for an ``AttentionCall``, of ``stitch::paged_attention``
    for a paged batch (``paged_case``'s arguments)."""
    triton, (target, backend), ast_source = triton_for_sm90()
    from stitch.runtime.kernels.triton_attention_kernel import decode_attention_kernel
    from stitch.runtime.kernels.triton_paged_kernel import paged_attention_kernel

    if isinstance(call, dict):
        fn = paged_attention_kernel
        key, specialization, (kwargs, bound, options) = specialize_paged(call)
    else:
        fn = decode_attention_kernel
        key, specialization, (kwargs, bound, options) = specialize(call)
    options, signature, constexprs, attrs = fn._pack_args(
        backend, kwargs, bound, specialization, options
    )
    source = ast_source(fn, signature, constexprs, attrs)
    try:
        compiled = triton.compile(source, target=target, options=options.__dict__)
    except Exception as exc:  # noqa: BLE001 - no ptxas for this target here
        pytest.skip(f"Triton cannot build an sm_90 cubin here ({exc})")
    return compiled, key


# Paged batches (tests/test_hf_paged_triton.py's paged_case) for the paged kernel.
PAGED_MIXED = [(0, 5), (7, 1), (3, 4), (20, 1)]
PAGED = {
    "paged-mixed": {"requests": PAGED_MIXED, "dtype": torch.bfloat16, "dim": 64},
    "paged-sliding-sinks-softcap": {
        "requests": [(0, 4), (12, 2), (5, 1)],
        "sliding": 4,
        "sinks": True,
        "softcap": 5.0,
        "dtype": torch.bfloat16,
        "dim": 64,
    },
}


@pytest.mark.parametrize(
    "features",
    [{}, {"window": 1}, {"window": 48, "sinks": True}, *PAGED.values()],
    ids=["plain", "window-of-one", "window-and-sinks", *PAGED],
)
def test_launch_facts_are_torchs_static_launcher_facts(
    features: dict[str, Any],
) -> None:
    paged = "requests" in features
    compiled, _ = compile_sm90(features if paged else attention_call(**features))
    facts, cubin = kernel_records.launch_facts(compiled)

    from torch._inductor.runtime.static_triton_launcher import (
        StaticallyLaunchedCudaKernel,
    )

    compiled._cubin_path = None  # what Inductor's own compile sets
    static = StaticallyLaunchedCudaKernel(compiled)
    scratch = int(static.has_global_scratch) + int(static.has_profile_scratch)
    assert facts["arg_types"] == static.arg_tys + "O" * scratch
    names = compiled.src.fn.arg_names
    constant = [i for i, p in enumerate(compiled.src.fn.params) if p.is_constexpr]
    runtime = [
        i
        for i in range(len(names))
        if i not in static.full_constexprs and i not in constant
    ]
    assert facts["launched"] == (*runtime, *[-1] * scratch)
    if not paged:
        window = names.index("window") in facts["launched"]
        assert window == (features.get("window") != 1)
    assert (facts["num_warps"], facts["shared"]) == (static.num_warps, static.shared)
    assert facts["function"] == static.name
    assert facts["function"].encode() in cubin  # the entry point the launcher loads


def one_specialization_per_key(
    specialize: Any, calls: dict[str, Any]
) -> dict[str, tuple[str, Any]]:
    """Each call's key (as text) and Triton's specialization, by name; asserts
    that calls with one key have one specialization."""
    seen: dict[str, tuple[str, Any]] = {}
    for name, call in calls.items():
        key, specialization, _ = specialize(call)
        seen[name] = (static_launch.specialization_text(key), specialization)
    for a, (text_a, spec_a) in seen.items():
        for b, (text_b, spec_b) in seen.items():
            if text_a == text_b:
                assert spec_a == spec_b, (a, b)
    return seen


def test_the_key_tells_apart_whatever_triton_compiles_apart() -> None:
    """Two calls with one key must bind to one Triton specialization: a prebuilt
    kernel is found by the key, and launched for every call that has it."""
    torch.manual_seed(0)
    calls = {
        "plain": attention_call(),
        "again": attention_call(),
        "positions 8 bytes off": attention_call(offset=1),
        "positions 16 bytes off": attention_call(offset=2),
        "window 1": attention_call(window=1),
        "window 16": attention_call(window=16),
        "window 17": attention_call(window=17),
        "window 2**31": attention_call(window=2**31),
        "sinks": attention_call(sinks=True),
        "fp16": attention_call(dtype=torch.float16),
    }
    seen = one_specialization_per_key(specialize, calls)
    assert seen["plain"][0] == seen["again"][0]
    assert seen["plain"][0] == seen["positions 16 bytes off"][0]
    texts = {text for text, _ in seen.values()}
    assert len(texts) == len(calls) - 2


def test_the_paged_key_tells_apart_whatever_triton_compiles_apart() -> None:
    """The same for ``stitch::paged_attention``: batches of every shape the
    engine builds (prefill, decode, mixed, padded, sliding windows, GQA,
    dtypes), so token counts and strides fall in every class Triton tells
    apart (1, multiples of 16, others)."""
    cases = {
        "mixed": {"requests": PAGED_MIXED},
        "mixed again": {"requests": PAGED_MIXED, "seed": 1},
        "decode": {"requests": [(5, 1), (9, 1), (2, 1), (70, 1)]},
        "one token": {"requests": [(5, 1)]},
        "sixteen tokens": {"requests": [(0, 16)], "read": False},
        "padded": {"requests": PAGED_MIXED, "pad": 3},
        "gqa 3": {"requests": PAGED_MIXED, "heads": 6, "kv_heads": 2, "dim": 24},
        "mha": {"requests": PAGED_MIXED, "heads": 2, "kv_heads": 2},
        "sliding": {"requests": [(0, 4), (6, 3), (7, 1)], "sliding": 4},
        "sliding, no reads": {
            "requests": [(0, 4), (0, 2)],
            "sliding": 4,
            "read": False,
        },
        "window": {"requests": PAGED_MIXED, "window": 5},
        "softcap": {"requests": PAGED_MIXED, "softcap": 2.0},
        "sinks": {"requests": PAGED_MIXED, "sinks": True},
        "bf16": {"requests": PAGED_MIXED, "dtype": torch.bfloat16},
        "fp16, fp32 cache": {
            "requests": PAGED_MIXED,
            "dtype": torch.float16,
            "cache_dtype": torch.float32,
        },
    }
    seen = one_specialization_per_key(specialize_paged, cases)
    assert seen["mixed"][0] == seen["mixed again"][0]
    assert seen["decode"][0] != seen["one token"][0]  # 4 sequences, not 1


def test_the_paged_op_launches_its_prebuilt_kernel_and_writes_the_cache_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a prebuilt kernel for the key, the op launches it, not Triton's JIT, and
    writes the cache before it (full attention) or after it (sliding window),
    as with Triton's; with none saved, Triton compiles and it is saved."""
    from test_hf_paged_triton import paged_case

    from stitch.runtime.kernels import paged_attention, triton_paged

    events: list[Any] = []

    class Prebuilt:
        def __init__(self, saved_keys: set[Any]) -> None:
            self.saved_keys = saved_keys

        def ready(self, key: Any) -> bool:
            return key in self.saved_keys

        def launch(self, key: Any, grid: Any, everything: Any) -> bool:
            events.append(("prebuilt", grid[2], len(everything)))
            return True

        def save(self, key: Any, compiled: Any) -> None:
            events.append(("save", compiled))

    class Jit:
        def __getitem__(self, grid: Any) -> Any:
            def run(*args: Any, **constexprs: Any) -> str:
                events.append(("triton", len(args) + len(constexprs)))
                return "compiled"

            return run

    kernels = type("Kernels", (), {"paged_attention_kernel": Jit()})()
    monkeypatch.setattr(static_launch, "enabled", lambda: True)
    monkeypatch.setattr(triton_paged, "triton_kernels", lambda: kernels)
    monkeypatch.setattr(
        triton_paged, "write_cache", lambda call: events.append(("write",))
    )
    for sliding in (0, 4):
        tensors, scalars = paged_case([(0, 3), (5, 1)], sliding=sliding)
        q, k, v, write, read, cu_q, cu_k, k_cache, v_cache, out = tensors
        args = (q, k, v, k_cache, v_cache, write, read, cu_q, cu_k, out, *scalars)
        call = paged_attention.PagedCall(*args)
        _, arguments, constexprs = triton_paged.kernel_arguments(call)
        key = triton_paged.specialization_key(q.device.index, arguments, constexprs)
        everything = len(arguments) + len(constexprs)
        first = [("write",)] if not sliding else []
        last = [("write",)] if sliding else []
        for saved_keys, launched in (
            (set(), [("triton", everything), ("save", "compiled")]),
            ({key}, [("prebuilt", 1, everything)]),
        ):
            events.clear()
            monkeypatch.setattr(triton_paged, "PREBUILT", Prebuilt(saved_keys))
            triton_paged.paged_attention_triton(*args)
            assert events == first + launched + last, (sliding, saved_keys)


def saved_kernel(
    tmp_path: Path,
) -> tuple[str, str, str, dict[str, Any], OpKernelRecord]:
    compiled, key = compile_sm90(attention_call())
    facts, cubin = kernel_records.launch_facts(compiled)
    root = str(tmp_path / "cache")
    folder = location.kernel_folder(root, "stitch::attention")
    fields = {
        "op": "stitch::attention",
        "specialization": static_launch.specialization_text(key),
        "gpu": "NVIDIA H100 80GB HBM3 sm_90 cuda 13.0 triton 3.6.0",
        "source_sha256": "0" * 64,
    }
    path = kernel_records.save_kernel(folder, root, "k1", fields, facts, cubin)
    found = kernel_records.find_kernel(folder, root, "k1", fields)
    assert found is not None
    record, cubin_path = found
    assert Path(cubin_path).read_bytes() == cubin
    assert record == OpKernelRecord(**fields, **facts, cubin_sha256=record.cubin_sha256)
    assert path == location.kernel_record_file(folder, "k1")
    return root, folder, cubin_path, fields, record


def test_a_prebuilt_kernel_is_found_as_it_was_saved(tmp_path: Path) -> None:
    root, folder, _, fields, _ = saved_kernel(tmp_path)
    assert (
        kernel_records.find_kernel(folder, root, "another", fields) is None
    )  # a miss, no file
    assert folder == os.path.join(root, "kernels", "stitch.attention")
    # The cache's own listings leave the ops' kernels alone.
    assert list(location.entry_folders(root)) == []
    assert local_units(root) == []


@pytest.mark.parametrize("damage", ["cubin", "record", "gpu", "loose folder"])
def test_a_damaged_prebuilt_kernel_is_refused_naming_the_file(
    tmp_path: Path, damage: str
) -> None:
    root, folder, cubin_path, fields, record = saved_kernel(tmp_path)
    path = location.kernel_record_file(folder, "k1")
    if damage == "cubin":
        data = bytearray(Path(cubin_path).read_bytes())
        data[len(data) // 2] ^= 0xFF
        Path(cubin_path).write_bytes(bytes(data))
        error, words = StitchError, [path, cubin_path, "not the one saved"]
    elif damage == "record":
        text = Path(path).read_text().replace(repr(record.arg_types), "'OOi'")
        Path(path).write_text(text)
        error, words = codec.RecordError, [path]
    elif damage == "gpu":
        fields = {**fields, "gpu": "NVIDIA H200 sm_90 cuda 13.0 triton 3.6.0"}
        error, words = StitchError, [path, "was saved for gpu", "H200"]
    else:
        os.chmod(folder, 0o777)
        error, words = StitchCacheTrustError, [folder, "writable by"]
    with pytest.raises(error) as caught:
        kernel_records.find_kernel(folder, root, "k1", fields)
    assert all(w in str(caught.value) for w in words), str(caught.value)


def test_the_op_saves_what_triton_compiled_under_the_noted_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stitch.runtime.kernels.triton_attention import PREBUILT

    compiled, key = compile_sm90(attention_call())
    prebuilt = static_launch.PrebuiltKernels(PREBUILT.op, PREBUILT.source_file)
    monkeypatch.setattr(static_launch, "gpu_of", lambda device: "an H100 (this test)")
    monkeypatch.setattr(location, "_kernel_root", [])
    # Compiled before the process opened an entry (an eager run first): no root
    # yet, nothing written; the op's next call, once a root is noted, saves it.
    prebuilt.save(key, compiled)
    assert prebuilt.launch(key, (4, 8, 1), ()) is False
    assert not (tmp_path / "cache").exists()
    root = tmp_path / "cache"
    location.note_cache_root(str(root))
    location.note_cache_root(str(tmp_path / "another"))  # the first noted wins
    assert prebuilt.launch(key, (4, 8, 1), ()) is False  # Triton's JIT serves it here
    prebuilt.save(key, compiled)  # once a process
    where = prebuilt._where(key)
    assert where is not None
    folder, noted, name, fields = where
    assert noted == str(root)
    found = kernel_records.find_kernel(folder, noted, name, fields)
    assert found is not None
    record, _ = found
    assert record.specialization == static_launch.specialization_text(key)
    assert record.gpu == "an H100 (this test)"
    assert record.source_sha256 == prebuilt.source_sha256
    assert sorted(p.suffix for p in Path(folder).iterdir()) == [".cubin", ".kernel"]
    # With a root noted before Triton compiles (the usual order), save writes at once.
    for file in Path(folder).iterdir():
        file.unlink()
    static_launch.PrebuiltKernels(PREBUILT.op, PREBUILT.source_file).save(key, compiled)
    assert kernel_records.find_kernel(folder, noted, name, fields) == found


# -- on a GPU: saved by one process, launched without Triton by the next ---------------

_PROCESS = textwrap.dedent("""
    import json, sys
    import torch
    from stitch.runtime.kernels.attention import attention_reference
    from stitch.runtime.store import location
    import stitch.runtime.kernels  # registers the ops

    location.note_cache_root(sys.argv[1])
    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape):
        return torch.randn(shape, generator=gen, device="cuda").to(torch.bfloat16)

    q, qkv = randn(3, 8, 64), randn(3, 3, 2, 64)
    k, v = qkv[:, 1], qkv[:, 2]
    caches = [randn(5, 96, 2, 64) for _ in "kv"]
    positions = torch.tensor([0, 95, 17], device="cuda")
    expected = torch.full_like(q, 7.0)
    attention_reference(q, k, v, *[c.clone() for c in caches], positions, expected, 0.125)
    got = torch.full_like(q, 7.0)
    for _ in range(2):
        torch.ops.stitch.attention(q, k, v, *caches, positions, got, 0.125)
    torch.cuda.synchronize()
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
    print(json.dumps({"triton": "triton" in sys.modules}))
    """)


# The same for stitch::paged_attention: a mixed batch of transformers' engine.
_PAGED_PROCESS = textwrap.dedent("""
    import json, sys
    import torch
    sys.path.insert(0, sys.argv[2])
    from test_hf_paged_triton import paged_case
    from stitch.runtime.kernels.paged_attention import paged_attention_reference
    from stitch.runtime.store import location
    import stitch.runtime.kernels  # registers the ops

    location.note_cache_root(sys.argv[1])
    tensors, scalars = paged_case(
        [(0, 5), (7, 1), (3, 4), (20, 1)], dtype=torch.bfloat16, dim=64, device="cuda"
    )
    q, k, v, write, read, cu_q, cu_k, k_cache, v_cache, out = tensors
    expected = [t.clone() for t in (k_cache, v_cache, out)]
    paged_attention_reference(
        q, k, v, *expected[:2], write, read, cu_q, cu_k, expected[2], *scalars
    )
    for _ in range(2):
        torch.ops.stitch.paged_attention(
            q, k, v, k_cache, v_cache, write, read, cu_q, cu_k, out, *scalars
        )
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected[2], rtol=2e-2, atol=2e-2)
    assert torch.equal(k_cache, expected[0]) and torch.equal(v_cache, expected[1])
    print(json.dumps({"triton": "triton" in sys.modules}))
    """)


def kernel_process(script: str, root: Path, *args: str) -> dict[str, Any]:
    """Run ``script`` in a fresh process over the cache ``root`` (its argv: the
    root, this folder, ``args``); the JSON its last line prints."""
    import json

    env = dict(os.environ)
    env.pop("STITCH_KEEP_KERNELS", None)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(root), os.path.dirname(__file__), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "op, script",
    [("stitch::attention", _PROCESS), ("stitch::paged_attention", _PAGED_PROCESS)],
    ids=["attention", "paged_attention"],
)
def test_a_second_process_launches_the_prebuilt_kernel_without_triton(
    tmp_path: Path, op: str, script: str
) -> None:
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)

    def run() -> dict[str, Any]:
        return kernel_process(script, root)

    assert run() == {"triton": True}  # compiled through Triton, and saved
    folder = Path(location.kernel_folder(str(root), op))
    assert len(list(folder.glob("*.kernel"))) == 1
    assert len(list(folder.glob("*.cubin"))) == 1
    assert run() == {"triton": False}  # the prebuilt cubin, equal outputs
