"""The variants, model subjects and preparation of bench/gpu_serving.py."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from gpu_serving_timing import Clock
from vllm_style import VllmStyleManager

from stitch.runtime import CompilationConfig, StitchBackend, compilation_counter
from stitch.runtime.cudagraph import CUDAGraphManager, EmulatedGraphOps
from stitch.runtime.examples import LlamaConfig, LlamaModel

VARIANTS = (
    "eager",
    "compile",
    "compile-ro",
    "stitch-vllm",
    "stitch-piecewise",
    "stitch-full",
    "stitch-fp",
    "stitch-full-tuned",
    "stitch-full-pdl",
    "stitch-full-copies",
)
# What runs when --variants is not given: the tuned ones compile for minutes more,
# and the copies are Stitch's old FULL (scripts/gpu_check.sh decode runs them).
DEFAULT_VARIANTS = VARIANTS[:7]
STITCH_MODES: dict[str, dict[str, Any]] = {
    "stitch-vllm": {"cudagraph_mode": "PIECEWISE"},  # with VllmStyleManager
    "stitch-piecewise": {"cudagraph_mode": "PIECEWISE"},
    "stitch-full": {"cudagraph_mode": "FULL"},
    "stitch-fp": {"cudagraph_mode": "FULL_AND_PIECEWISE"},
    # FULL, with --tuned-sizes compiled for themselves under --tuned-options
    # (CompilationConfig.compile_sizes_inductor_config).
    "stitch-full-tuned": {"cudagraph_mode": "FULL"},
    # FULL, every Triton kernel launched with programmatic dependent launch.
    "stitch-full-pdl": {
        "cudagraph_mode": "FULL",
        "inductor_compile_config": {"triton.enable_pdl": True},
    },
    # FULL without Stitch's own passes (today only UnfuseResidualAddmm): an
    # Inductor post-grad pass of the user's own takes their hook (NOTE: [Stitch's
    # own passes run on every piece]), here none.  Inductor's folds of the
    # residual adds into addmm stay, with their device-to-device copies on CUDA
    # (NOTE: [a piece's residual add stays out of its GEMM]): FULL as it was.
    "stitch-full-copies": {
        "cudagraph_mode": "FULL",
        "inductor_compile_config": {"post_grad_custom_post_pass": None},
    },
}
# What the report says of each variant it names.
DESCRIPTIONS = {
    "eager": "the model as written",
    "compile": "torch.compile, Inductor's defaults",
    "compile-ro": "torch.compile with Inductor's CUDA graphs (reduce-overhead)",
    "stitch-vllm": "Stitch PIECEWISE through the vLLM-style per-piece path",
    "stitch-piecewise": "Stitch PIECEWISE, the dispatch hoisted",
    "stitch-full": "Stitch FULL, residual adds kept out of the GEMMs (no copies)",
    "stitch-fp": "Stitch FULL_AND_PIECEWISE",
    "stitch-full-tuned": "Stitch FULL, --tuned-sizes compiled under --tuned-options",
    "stitch-full-pdl": "Stitch FULL, Triton kernels with programmatic dependent launch",
    "stitch-full-copies": "Stitch FULL without its own passes: residual adds folded "
    "into addmm, two device-to-device copies per layer on CUDA (as before "
    "UnfuseResidualAddmm)",
}
# vLLM's default capture sizes: 1, 2, 4, then every multiple of 8 up to 512.
CAPTURE_SIZES = [1, 2, 4, *range(8, 513, 8)]
NO_GUARDS = {"guard_filter_fn": lambda entries: [False] * len(entries)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class NullGraphOps(EmulatedGraphOps):
    """Graphs whose replay does nothing (``--host-only``)."""

    class Graph:
        def replay(self) -> None:
            pass

    def capture(self, fn: Callable[..., Any], args: Sequence[Any], **_: Any) -> Any:
        return self.Graph(), fn(*args)


def null_attention_kernel() -> torch.library.Library:
    """``stitch::attention`` on CPU returns at once (``--host-only``); keep the result."""
    lib = torch.library.Library("stitch", "IMPL")
    lib.impl("attention", lambda *args: None, "CPU")
    return lib


# -- the model ----------------------------------------------------------------------------
def build_model(cfg: LlamaConfig, device: torch.device) -> LlamaModel:
    """Random weights, created on the device (the caches are several GB)."""
    with torch.device(device):
        model = LlamaModel(cfg)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[-1]), generator=gen)
    return model.to(cfg.dtype).eval()


# The KV caches: allocated by the serving process, never read from a file.
CACHES = ("k_cache", "v_cache")


def save_weights(model: torch.nn.Module, path: str) -> None:
    """Every parameter and buffer but the KV caches, in ``path`` (safetensors),
    for :func:`restarted_model`; written once, by the first process."""
    from safetensors.torch import save_file

    state = {
        name: t.detach().contiguous()
        for name, t in (*model.named_parameters(), *model.named_buffers())
        if name.rpartition(".")[2] not in CACHES
    }
    save_file(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def restarted_model(cfg: LlamaConfig, device: torch.device, path: str) -> LlamaModel:
    """The model as a serving process that restarts builds it (vLLM's loader
    does the same): made in its dtype on the device, its weights read from the
    file the first process saved (:func:`save_weights`), its KV caches zeroed.
    :func:`build_model`'s fp32 copy and random init were most of a warm
    restart's first token on an H200 (0.91 s of 1.30 s).  Not on the meta
    device: its first use imports torch's meta registrations (0.5 s and more)."""
    from safetensors.torch import load_file

    default = torch.get_default_dtype()
    torch.set_default_dtype(cfg.dtype)
    try:
        with torch.device(device):
            model = LlamaModel(cfg).to(cfg.dtype)  # and the rotary frequencies
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        for name, t in load_file(path, device=str(device)).items():
            owner, _, leaf = name.rpartition(".")
            getattr(model.get_submodule(owner), leaf).copy_(t)
        model.reset_kv_caches()
    return model.eval()


@dataclasses.dataclass
class Subject:
    """The model served, and what the benchmark needs to know of it."""

    model: torch.nn.Module
    inputs: Callable[[int, int], tuple[tuple[Any, ...], dict[str, Any]]]  # (n, seed)
    caches: list[torch.Tensor]  # k0, v0, k1, v1, ...: one attention call per pair
    heads: int
    head_dim: int
    hidden: int
    dtype: torch.dtype
    pad_values: dict[str, float]
    description: dict[str, str]

    def call(self, forward: Callable[..., Any], n: int, seed: int) -> Any:
        args, kwargs = self.inputs(n, seed)
        return forward(*args, **kwargs)


def example_subject(cfg: LlamaConfig, device: torch.device) -> Subject:
    model = build_model(cfg, device)
    caches = [
        c
        for layer in model.layers
        for c in (layer.self_attn.k_cache, layer.self_attn.v_cache)
    ]
    return Subject(
        model,
        lambda n, seed: (make_inputs(cfg, n, device, seed), {}),
        caches,
        cfg.num_heads,
        cfg.head_dim,
        cfg.hidden_size,
        cfg.dtype,
        {"positions": -1},
        {
            "model": "the example llama",
            **{k: str(v) for k, v in dataclasses.asdict(cfg).items()},
        },
    )


def build_hf_llama(cfg: LlamaConfig, device: torch.device | str) -> torch.nn.Module:
    """transformers' LlamaForCausalLM of ``cfg``'s shapes, random weights,
    attn_implementation="stitch", with the token layout's caches."""
    from stitch.runtime.hf.serving import build_serving_llama

    return build_serving_llama(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_seqs=cfg.max_seqs,
        max_len=cfg.max_len,
        dtype=cfg.dtype,
        device=device,
        seed=0,
    )


def hf_subject(cfg: LlamaConfig, device: torch.device) -> Subject:
    """transformers' LlamaForCausalLM, attn_implementation="stitch", token layout."""
    from stitch.runtime.hf.serving import PAD_VALUES, kv_caches, serving_inputs

    model = build_hf_llama(cfg, device)

    def inputs(n: int, seed: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        kwargs = serving_inputs(model, n, seed=seed)
        torch._dynamo.mark_dynamic(kwargs["input_ids"], 0)
        torch._dynamo.mark_dynamic(kwargs["position_ids"], 0)
        return (), kwargs

    import transformers

    return Subject(
        model,
        inputs,
        kv_caches(model),
        cfg.num_heads,
        cfg.head_dim,
        cfg.hidden_size,
        cfg.dtype,
        dict(PAD_VALUES),
        {
            "model": f"transformers {transformers.__version__} LlamaForCausalLM, "
            'attn_implementation="stitch"',
            **{k: str(v) for k, v in dataclasses.asdict(cfg).items()},
        },
    )


def make_inputs(
    cfg: LlamaConfig, n: int, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (n,), generator=gen).to(device)
    positions = torch.randint(0, cfg.max_len, (n,), generator=gen).to(device)
    torch._dynamo.mark_dynamic(ids, 0)
    torch._dynamo.mark_dynamic(positions, 0)
    return ids, positions


@dataclasses.dataclass
class Prepared:
    forward: Callable[..., Any]
    compile_s: float = 0.0
    capture_s: float = 0.0
    graph_mib: float = 0.0
    graphs: int = 0
    note: str = ""
    largest_mib: float = 0.0  # the graphs of the largest capture size alone


def _reserved_mib() -> float:
    return torch.cuda.memory_reserved() / 2**20 if torch.cuda.is_available() else 0.0


def prepare(
    variant: str,
    subject: Subject,
    args: argparse.Namespace,
    device: torch.device,
    clock: Clock,
) -> Prepared:
    """Compile (and capture) one variant; first calls at every size happen here."""
    model = subject.model
    sizes = args.decode + [args.prefill]
    first = max(args.decode)
    if variant == "eager":
        return Prepared(model)
    start = time.perf_counter()
    if variant in ("compile", "compile-ro"):
        options: dict[str, Any] = dict(NO_GUARDS)
        if variant == "compile-ro":
            options["triton.cudagraphs"] = True
        forward = torch.compile(model, fullgraph=True, options=options)
        counted = torch._dynamo.utils.counters["inductor"]
        skipped = counted.get("cudagraph_skips", 0)
        subject.call(forward, first, 0)
        clock.sync()
        compile_s = time.perf_counter() - start
        gc.collect()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        before = _reserved_mib()
        start = time.perf_counter()
        for n in sorted(sizes, reverse=True):  # Inductor records per size
            for _ in range(3):
                subject.call(forward, n, 1)
        clock.sync()
        skips = counted.get("cudagraph_skips", 0) - skipped
        return Prepared(
            forward,
            compile_s,
            time.perf_counter() - start if variant == "compile-ro" else 0.0,
            _reserved_mib() - before if variant == "compile-ro" else 0.0,
            note=f"cudagraph skips: {skips}" if variant == "compile-ro" else "",
        )
    config = CompilationConfig(
        backend=args.stitch_backend,
        disable_cache=True,
        cudagraph_capture_sizes=args.capture_sizes,
        cudagraph_pad_values=subject.pad_values,
        **STITCH_MODES[variant],
        **(
            {"max_full_cudagraph_size": args.max_full} if variant == "stitch-fp" else {}
        ),
        **(
            {
                "compile_sizes": args.tuned_sizes,
                "compile_sizes_inductor_config": args.tuned_options,
            }
            if variant == "stitch-full-tuned"
            else {}
        ),
    )
    manager = VllmStyleManager if variant == "stitch-vllm" else CUDAGraphManager
    ops = None
    if args.emulate or args.host_only:
        ops = NullGraphOps() if args.host_only else EmulatedGraphOps()
    backend = StitchBackend(config, cudagraphs=manager(config, ops=ops))
    forward = torch.compile(
        model, backend=backend, fullgraph=True, options=dict(NO_GUARDS)
    )
    subject.call(forward, first, 0)
    clock.sync()
    compile_s = time.perf_counter() - start
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    before, captured = _reserved_mib(), compilation_counter.num_cudagraph_captured

    def dummy(n: int) -> None:
        subject.call(forward, n, 2)

    start = time.perf_counter()
    # Largest first (as capture_sizes orders them): what the largest size's
    # graphs reserve alone, then what all sizes reserve together.
    backend.cudagraphs.capture_sizes(dummy, [max(args.capture_sizes)])
    clock.sync()
    largest_mib = _reserved_mib() - before
    backend.cudagraphs.capture_sizes(dummy)
    clock.sync()
    capture_s = time.perf_counter() - start
    graphs = compilation_counter.num_cudagraph_captured - captured
    note = "" if backend.cudagraphs.runners else "no CUDA graphs (not a CUDA device?)"
    # Serving never captures: a capture now would be a bug of the runtime.
    backend.cudagraphs.forbid_capture()
    return Prepared(
        forward,
        compile_s,
        capture_s,
        _reserved_mib() - before,
        graphs,
        note,
        largest_mib,
    )
