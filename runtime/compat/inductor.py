"""Inductor: ``standalone_compile``, its artifacts, the names its wrapper code imports.

Every Inductor module is imported inside the function that needs it (or, for
:data:`CustomGraphPass`, when the name is first read): a warm start that loads
prebuilt pieces never imports Inductor.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

# NOTE: [names Inductor's wrapper code imports]
# A prebuilt piece (pipeline/prebuilt/load.py) execs the Python wrapper Inductor
# generated with the imports that would load Inductor answered by stand-ins.
# These are the modules it imports and the plain functions it takes from them
# (the same in every supported release); AsyncCompile and extern_kernels are
# answered separately.
WRAPPER_FUNCTIONS = {
    "torch._inductor.hooks": ("run_intermediate_hooks",),
    "torch._inductor.utils": ("maybe_profile",),
    "torch._inductor.codegen.memory_planning": ("_align",),
    # A CUDA piece's wrapper (its Triton kernels are answered by the record).
    "torch._inductor.runtime.triton_heuristics": (
        "start_graph",
        "end_graph",
        "grid",
        "split_scan_grid",
        "grid_combo_kernels",
        "cooperative_reduction_grid",
    ),
}
# What a CUDA piece's wrapper imports of Triton at its top level (for its
# kernels, which the record answers): imported only if ever read.
TRITON_MODULES = ("triton", "triton.language")
# The docstring heading a CUDA wrapper's compile-time autotuning block.
AUTOTUNE_BLOCK = "Compile-time auto-tuning block:"
ASYNC_COMPILE = "torch._inductor.async_compile"
SELECT_ALGORITHM = "torch._inductor.select_algorithm"
# Prefixes of the modules that are Inductor's or Dynamo's own.
INTERNAL_PREFIXES = ("torch._inductor", "torch._dynamo")

# Names imported when first read (PEP 562): a module-level base class.
_LAZY = {"CustomGraphPass": "torch._inductor.custom_graph_pass"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def import_isa_probe() -> None:
    """Import what the ISA probe uses, in the calling thread (see
    start_inductor_warmup): about half of Inductor's imports."""
    import concurrent.futures  # noqa: F401
    import platform  # noqa: F401

    import torch.utils.cpp_extension  # noqa: F401 - cpp_builder's, when it builds
    from torch._inductor import codecache, cpp_builder, cpu_vec_isa  # noqa: F401

    from .isa_probe import remember_answers

    remember_answers()  # NOTE: [the ISA probe's answers remembered]


def import_inductor() -> None:
    """Import what compiling needs, in the calling thread (see start_inductor_warmup)."""
    import_isa_probe()
    import torch._dynamo  # noqa: F401
    import torch._inductor.compile_fx  # noqa: F401


# NOTE: [Inductor's pools in a forked process]
# With more than one compile thread (two or more cores), Inductor submits its
# C++ and Triton builds to a ThreadPoolExecutor it creates once and caches
# (``AsyncCompile.pool``, and ``thread_pool`` from torch 2.15).  A process
# forked after one was created inherits the executor but none of its threads,
# and the executor counts the dead threads as idle: a build submitted there
# waits forever.  torch's own fork hook forgets the process pool but, before
# 2.15, not the thread pool.  A compile worker forgets both before it compiles.


def forget_compile_pools() -> None:
    """In a forked process: drop the compile pools Inductor cached in its parent."""
    if "torch._inductor.async_compile" not in sys.modules:
        return  # nothing was created: the parent never imported it
    from torch._inductor import async_compile

    async_compile.after_fork()
    for name in ("pool", "thread_pool", "process_pool"):
        cached = getattr(async_compile.AsyncCompile, name, None)
        if cached is not None and hasattr(cached, "cache_clear"):
            cached.cache_clear()


def size_compile_threads_again() -> None:
    """In a forked worker given more cores than its parent had (NOTE: [the
    cores a compile worker runs on]): Inductor sizes its build pool anew, to
    them, at its next compile ($TORCHINDUCTOR_COMPILE_THREADS still wins)."""
    if "torch._inductor.config" in sys.modules:
        from torch._inductor import config

        config.compile_threads = None


def warm_compile_pools(triton: bool) -> None:
    """Start Inductor's build pools now (NOTE: [pre-started compile workers]):
    its thread pool and, for graphs with Triton kernels (``triton``), its
    subprocess pool.  With one compile thread ($TORCHINDUCTOR_COMPILE_THREADS=1,
    or a worker's share of the build pools: NOTE: [a worker's share of the
    build pools]) Inductor compiles in the calling thread and has neither:
    asking for one fails its assert.

    NOTE: [no subprocess pool for C++ kernels]
    Inductor builds C++ kernels in its thread pool (each build is a gcc
    process); its subprocess pool, a sidecar that imports torch and forks
    its own workers, compiles Triton kernels only.  A compile for the CPU in
    the serving process never starts it.  A spawned worker for the CPU used
    to: 2 s of a core on 2 cores (the sidecar's imports), beside the worker's
    ISA probe and first job, for a pool it never used.  Should a CPU worker
    meet a Triton kernel after all, Inductor starts the pool then, and
    compiles in the worker until it answers.
    """
    from torch._inductor.async_compile import AsyncCompile, get_compile_threads

    if get_compile_threads() <= 1:
        return
    if triton and AsyncCompile.use_process_pool():
        AsyncCompile.warm_pool()
    AsyncCompile.pool()


def config_options() -> dict[str, Any]:
    """Every option of ``torch._inductor.config`` and its value."""
    import torch._inductor.config as inductor_config

    return inductor_config.get_config_copy()


def standalone_compile(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    dynamic_shapes: str,
    config_patches: dict[str, Any],
) -> Any:
    from torch._inductor import standalone_compile as compile_

    return compile_(
        gm,
        list(example_inputs),
        dynamic_shapes=dynamic_shapes,
        options={"config_patches": config_patches},
    )


def load_artifact(path: str) -> Any:
    """A binary artifact :func:`standalone_compile` saved, loaded through Inductor."""
    from torch._inductor import CompiledArtifact

    return CompiledArtifact.load(path=path, format="binary")


def artifact_parts(data: bytes) -> tuple[dict[str, bytes], list[bytes]] | None:
    """The Inductor graphs (by key) and AOTAutograd entries of a binary artifact.

    None when ``data`` is not in the cache format.  Contents are pickles.
    """
    from torch._inductor.standalone_compile import CacheCompiledArtifact
    from torch.compiler._cache import CacheArtifactManager
    from torch.utils._appending_byte_serializer import BytesReader

    reader = BytesReader(data)
    if reader.read_bytes() != CacheCompiledArtifact.CACHE_HEADER:
        return None
    reader.read_bytes()  # torch key
    reader.read_str()  # AOTAutograd key
    found = CacheArtifactManager.deserialize(reader.read_bytes()) or {}
    graphs = {a.key: a.content for a in found.get("inductor", [])}
    return graphs, [a.content for a in found.get("aot_autograd", [])]


def load_cpp_kernel(argtypes: Any, source: str) -> Any:
    """Build (or find in Inductor's cache) the C++ kernel of ``source``."""
    from torch._inductor.codecache import CppPythonBindingsCodeCache

    return CppPythonBindingsCodeCache.load_pybinding(argtypes, source)


def extern_kernel(name: str) -> Any:
    """``extern_kernels.<name>`` as Inductor's wrapper code calls it."""
    from torch._inductor.select_algorithm import extern_kernels

    return getattr(extern_kernels, name)


def publish_tensor_data_ptr() -> None:
    """What Inductor's loader publishes before loading a C++ kernel library.

    The kernels' argument parsing reads this pointer from the environment.
    """
    os.environ["_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"] = str(
        torch._C._dynamo.guards._torchinductor_pyobject_tensor_data_ptr  # type: ignore[attr-defined]
    )


# -- Triton kernels of a CUDA piece (NOTE: [prebuilt Triton kernels]) -------------


def tuned_triton_kernels(wrapper: str) -> dict[str, Any]:
    """The Triton kernels of a CUDA wrapper, each autotuned to one configuration.

    Inductor's wrapper source starts with a compile-time autotuning block (a
    docstring): the kernels again, and one call of each on example inputs of the
    hinted sizes.  Running it settles every kernel with several configurations
    (Inductor's own ``autotune_at_compile_time`` runs the same block).  Kernel
    name -> its ``CachingAutotuner``; empty when the wrapper has no block.
    """
    start = wrapper.find(AUTOTUNE_BLOCK)
    if start < 0:
        return {}
    start += len(AUTOTUNE_BLOCK)
    end = wrapper.find('"""', start)
    if end < 0:
        return {}
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    namespace: dict[str, Any] = {"__name__": "stitch_autotune_block"}
    exec(
        compile(wrapper[start:end], "<autotune block>", "exec"), namespace
    )  # noqa: S102
    return {k: v for k, v in namespace.items() if isinstance(v, CachingAutotuner)}


def load_triton_kernel(name: str, source: str) -> Any:
    """A Triton kernel's ``CachingAutotuner`` from its generated module source."""
    from torch._inductor.codecache import TritonCodeCache

    return TritonCodeCache.load(name, source)


def triton_kernel_facts(kernel: Any) -> tuple[dict[str, Any], bytes]:
    """What launching a settled Triton kernel takes, and its cubin.

    ``kernel``: a ``CachingAutotuner`` with one launcher, launched statically
    (through ``torch._C._StaticCudaLauncher``).  Raises ``ValueError`` naming
    why the kernel cannot be launched that way.
    """
    from torch._inductor.runtime.triton_heuristics import GridExpr

    if not kernel.launchers:  # (precompiling again would undo an autotuning)
        kernel.precompile()
    launchers = kernel.launchers
    if len(launchers) != 1:
        raise ValueError(f"{len(launchers)} configurations, not autotuned to one")
    launcher = launchers[0]
    if not getattr(launcher, "_is_static", False):
        raise ValueError("it is not launched statically (the CUDA launcher refused it)")
    results = [
        r
        for r in getattr(kernel, "compile_results", ()) or ()
        if r.config is launcher.config
        or (r.config.kwargs, r.config.num_warps, r.config.num_stages)
        == (
            launcher.config.kwargs,
            launcher.config.num_warps,
            launcher.config.num_stages,
        )
    ]
    if not results:
        raise ValueError("its compiled form is not kept")
    result = results[0]
    static = result.kernel
    result.reload_cubin_path()
    with open(static.cubin_path, "rb") as f:
        cubin = f.read()
    grid = GridExpr.from_meta(result.inductor_meta, result.config)
    _, parameters, none_args = result._get_arg_lists(
        static.arg_names, static.declared_constexprs
    )
    launched = [
        arg
        for i, arg in enumerate(static.arg_names)
        if i not in static.full_constexprs and arg not in none_args
    ]
    arg_types = static.arg_tys
    for scratch in (static.has_global_scratch, static.has_profile_scratch):
        if scratch:
            arg_types += "O"
            launched.append("None")
    if len(launched) != len(arg_types):
        raise ValueError(f"{len(launched)} arguments for {len(arg_types)} types")
    device = result.compile_meta.get("device", 0) or 0
    facts = {
        "function": static.name,
        "num_warps": int(static.num_warps),
        "shared": int(static.shared),
        "arg_types": arg_types,
        "parameters": list(parameters),
        "grid_prefix": list(grid.prefix),
        "grid": [str(grid.x_grid), str(grid.y_grid), str(grid.z_grid)],
        "launched": launched,
        "device": int(device),
    }
    return facts, cubin
