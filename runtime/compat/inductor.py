"""Inductor: ``standalone_compile``, its artifacts, the names its wrapper code imports.

Every Inductor module is imported inside the function that needs it (or, for
:data:`CustomGraphPass`, when the name is first read): a warm start that loads
prebuilt pieces never imports Inductor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

# NOTE: [names Inductor's wrapper code imports]
# A prebuilt piece (pipeline/prebuilt.py) execs the Python wrapper Inductor
# generated with the imports that would load Inductor answered by stand-ins.
# These are the modules it imports and the plain functions it takes from them
# (the same in every supported release); AsyncCompile and extern_kernels are
# answered separately.
WRAPPER_FUNCTIONS = {
    "torch._inductor.hooks": ("run_intermediate_hooks",),
    "torch._inductor.utils": ("maybe_profile",),
    "torch._inductor.codegen.memory_planning": ("_align",),
}
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


def import_inductor() -> None:
    """Import what compiling needs, in the calling thread (see start_inductor_warmup)."""
    import torch._dynamo  # noqa: F401
    import torch._inductor.compile_fx  # noqa: F401
    from torch._inductor import codecache, cpp_builder, cpu_vec_isa  # noqa: F401


def probe_cpu_isa() -> None:
    from torch._inductor import cpu_vec_isa

    cpu_vec_isa.pick_vec_isa()


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
