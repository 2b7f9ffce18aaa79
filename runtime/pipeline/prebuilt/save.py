"""Write a piece's prebuilt record: its wrapper source, its built kernels, its runtime facts.

See NOTE: [prebuilt pieces] in ``load.py``.  This side runs in a process that
has just compiled (or loaded through Inductor) the piece, so Inductor is imported
and every kernel of the piece is built and loaded: each kernel library is copied
from where Inductor loaded it, never rebuilt.
"""

from __future__ import annotations

import ast
import logging
import os
import pickle
import re
from collections.abc import Sequence
from typing import Any

import torch

from ...compat import inductor, python_ast
from ...compat.versions import gpu_fingerprint
from ...store.digests import content_hash
from ...store.extras import save_extras
from .inductor_stand_ins import PrebuiltUnavailable, exec_wrapper, resolve_dotted
from .load import (
    cubin_name,
    kernel_key,
    kernel_name,
    machine_fingerprint,
    prebuilt_path,
    record_name,
    render_record,
    triton_key,
)

log = logging.getLogger("stitch")

EXTERN_USE = re.compile(r"\bextern_kernels\.(\w+)")
# A kernel launch that passes its grid (older wrappers): not the launcher we build.
GRID_ARGUMENT = re.compile(r"\.run\([^\n]*\bgrid=")
TRITON_KERNEL = "async_compile.triton("


def save_prebuilt(artifact_path: str, artifact_sha256: str) -> str:
    """Write ``prebuilt/<key>.prebuilt`` and its kernels as the artifact's extra
    files (listed with their sha256 in the artifact's ``extras.py``); the
    record's path.

    Raises :class:`PrebuiltUnavailable` naming why a piece cannot run without
    Inductor (it then loads through Inductor, as before).
    """
    graph, entry = read_artifact(artifact_path)
    increment, align = runtime_facts(graph, entry)
    source = graph.source_code
    externs = {
        name: dotted_path(name) for name in sorted(set(EXTERN_USE.findall(source)))
    }
    kernels: dict[str, str] = {}
    files: dict[str, bytes] = {}

    def kernel(argtypes: Any, kernel_source: str) -> Any:
        fn = inductor.load_cpp_kernel(argtypes, kernel_source)
        library = getattr(getattr(fn, "__self__", None), "__file__", None)
        if not isinstance(library, str) or not os.path.isfile(library):
            raise PrebuiltUnavailable("a kernel's library file cannot be found")
        with open(library, "rb") as f:
            data = f.read()
        sha = content_hash(data)
        files[kernel_name(sha)] = data
        kernels[kernel_key(argtypes, kernel_source)] = sha
        return fn

    tritons: dict[str, dict[str, Any]] = {}
    tuned: dict[str, Any] = {}
    if TRITON_KERNEL in source:
        if GRID_ARGUMENT.search(source):
            raise PrebuiltUnavailable("its Triton kernels are launched with a grid")
        try:
            tuned = inductor.tuned_triton_kernels(source)
        except Exception as exc:  # noqa: BLE001 - then each kernel must be settled
            log.info(
                "stitch: the autotuning block of %s failed: %s", artifact_path, exc
            )

    def triton(name: str, kernel_source: str, device_str: str = "cuda") -> Any:
        found = tuned.get(name) or inductor.load_triton_kernel(name, kernel_source)
        try:
            facts, cubin = inductor.triton_kernel_facts(found)
        except ValueError as exc:
            raise PrebuiltUnavailable(f"Triton kernel {name}: {exc}") from None
        sha = content_hash(cubin)
        files[cubin_name(sha)] = cubin
        tritons[triton_key(name, kernel_source)] = {**facts, "cubin_sha256": sha}
        return found

    # Running the module's top level (as Inductor did when it loaded the piece)
    # both collects the kernels and proves the wrapper runs with the stand-ins.
    resolved = {name: resolve_dotted(path) for name, path in externs.items()}
    exec_wrapper(
        source,
        f"<stitch-prebuilt-save-{artifact_sha256[:12]}>",
        kernel,
        resolved,
        triton,
    )
    devices = sorted({facts["device"] for facts in tritons.values()})
    if len(devices) > 1:
        raise PrebuiltUnavailable(f"its Triton kernels run on devices {devices}")
    record = {
        "artifact_sha256": artifact_sha256,
        "machine": machine_fingerprint(),
        "torch_version": str(torch.__version__),
        "increment_version": list(increment),
        "extern_kernels": externs,
        "kernels": kernels,
        "wrapper": source,
        "triton": tritons,
        "gpu": gpu_fingerprint(devices[0]) if devices else "",
        "align_inputs": list(align),
    }
    files[record_name(artifact_path)] = render_record(record).encode("utf-8")
    save_extras(artifact_path, artifact_sha256, files)
    return prebuilt_path(artifact_path)


def read_artifact(path: str) -> tuple[Any, Any]:
    """The ``CompiledFxGraph`` and the AOTAutograd entry inside a binary artifact."""
    with open(path, "rb") as f:
        parts = inductor.artifact_parts(f.read())
    if parts is None:
        raise PrebuiltUnavailable("not a cache-format artifact")
    graphs, entries = parts
    if len(entries) != 1:
        raise PrebuiltUnavailable(f"{len(entries)} AOTAutograd entries")
    entry = pickle.loads(entries[0])
    info = getattr(getattr(entry, "compiled_fw", None), "fx_graph_cache_info", None)
    graph_key = info[0] if isinstance(info, tuple) and info else None
    if graph_key not in graphs:
        raise PrebuiltUnavailable("the forward graph is not in the artifact")
    return pickle.loads(graphs[graph_key]), entry


def runtime_facts(graph: Any, entry: Any) -> tuple[list[int], list[int]]:
    """Check the piece runs as ``piece_runnable`` runs it; the inputs whose
    versions it bumps, and those it realigns."""
    why = []
    if getattr(entry, "compiled_bw", None) is not None:
        why.append("it has a backward graph")
    if getattr(entry, "maybe_subclass_meta", None) is not None:
        why.append("it has tensor subclasses")
    if any(
        getattr(w, "needs_post_compile", True) for w in entry.dispatch_wrappers or ()
    ):
        why.append("AOTAutograd wraps its inputs (duplicates or synthetic bases)")
    meta = entry.runtime_metadata
    if meta.num_intermediate_bases:
        why.append("outputs alias each other")
    elif meta.num_outputs_aliased:
        why.extend(input_views_unshown(meta.output_info, graph.source_code))
    if meta.num_mutated_inp_runtime_indices:
        why.append("input mutations are applied outside the graph")
    if meta.is_rng_op_functionalized or meta.tokens:
        why.append("it uses functionalized RNG or effect tokens")
    if meta.grad_enabled_mutation is not None:
        why.append("it changes grad mode")
    if not isinstance(getattr(graph, "source_code", None), str):
        why.append("its wrapper source is not saved")
    if set(getattr(graph, "device_types", ())) - {"cpu", "cuda"}:
        why.append(f"it runs on {sorted(graph.device_types)}")
    if graph.constants or graph.torchbind_constants:
        why.append("it carries constants")
    align = sorted(graph.inputs_to_check or ())
    if set(align) & set(getattr(graph, "mutated_input_idxs", ()) or ()):
        why.append("it realigns an input it mutates")
    if (
        getattr(graph, "_wrap_compiled_regions", False)
        or graph.cudagraph_info is not None
    ):
        why.append("it is wrapped for compiled regions or CUDA graphs")
    if why:
        raise PrebuiltUnavailable("; ".join(why))
    keeps = getattr(entry.sanitized_aot_config, "keep_inference_input_mutations", False)
    increment = (
        list(meta.mutated_graph_handled_indices_seen_by_autograd) if keeps else []
    )
    return increment, align


# What AOTAutograd calls an output that is an input or a view of one.
INPUT_VIEWS = ("alias_of_input", "is_input")


def input_views_unshown(outputs: Sequence[Any], source: Any) -> list[str]:
    """Why the piece's aliased outputs are not plain views of its inputs ([]: they are).

    NOTE: [a piece's output that views its input]
    A piece often hands the splitting op a view of one of its own inputs (a
    transformers Llama in the token layout passes ``position_ids.view(-1)``
    to ``stitch::attention``).  AOTAutograd's wrapper rebuilds such an output
    from the input it views (``gen_alias_from_base``), which matters for
    autograd only: in inference the graph's own output is already that view
    when the wrapper returns it as ``argN_1`` or ``reinterpret_tensor(argN_1,
    ...)``, with N the input AOTAutograd names.  Such a piece runs prebuilt
    as it is; any other aliased output (of an intermediate, a view the
    wrapper computes otherwise) keeps the piece on Inductor's load.
    """
    returned = _returned(source)
    if returned is None or len(returned) != len(outputs):
        return ["outputs alias inputs, and its wrapper's return cannot be read"]
    why = []
    for i, (info, expr) in enumerate(zip(outputs, returned, strict=True)):
        kind = getattr(getattr(info, "output_type", None), "name", "")
        if kind == "non_alias":
            continue
        if kind not in INPUT_VIEWS:
            why.append(f"output {i} aliases an intermediate or each other ({kind})")
            continue
        base = f"arg{getattr(info, 'base_idx', None)}_1"
        if isinstance(expr, ast.Call) and getattr(expr.func, "id", None) == (
            "reinterpret_tensor"
        ):
            expr = expr.args[0] if expr.args else expr
        if not (isinstance(expr, ast.Name) and expr.id == base):
            why.append(f"output {i} aliases an input but is not returned as {base}")
    return why


def _returned(source: Any) -> list[ast.expr] | None:
    """The expressions the wrapper's ``call`` returns (None: not one tuple)."""
    if not isinstance(source, str):
        return None
    try:
        tree = python_ast.parse(source)
    except SyntaxError:
        return None
    calls = [
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "call"
    ]
    if len(calls) != 1:
        return None
    returns = [n for n in ast.walk(calls[0]) if isinstance(n, ast.Return)]
    if len(returns) != 1 or not isinstance(returns[0].value, (ast.Tuple, ast.List)):
        return None
    return list(returns[0].value.elts)


def dotted_path(name: str) -> str:
    """An importable path of ``extern_kernels.<name>`` (outside Inductor)."""
    fn = inductor.extern_kernel(name)
    candidates = []
    if isinstance(fn, torch._ops.OpOverload):
        namespace, _, rest = fn.name().partition("::")
        op, _, overload = rest.partition(".")
        candidates.append(f"torch.ops.{namespace}.{op}.{overload or 'default'}")
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if module and qualname:
        candidates.append(f"{module}.{qualname}")
    if getattr(fn, "__name__", None):
        candidates.append(f"torch.{fn.__name__}")
    for path in candidates:
        if path.startswith(inductor.INTERNAL_PREFIXES):
            continue
        try:
            if resolve_dotted(path) is fn:
                return path
        except Exception:  # noqa: BLE001 - try the next spelling
            continue
    raise PrebuiltUnavailable(f"extern kernel {name} has no path outside Inductor")
