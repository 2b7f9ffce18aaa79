"""CUDA graphs for the compiled pieces: padding, capture per size, replay.

One forward of ``n`` tokens on a CUDA device, in PIECEWISE mode::

    PaddedRunner          n -> padded size p (a capture size); dynamic inputs are
                          copied into static buffers in one batched copy
      execution_fn(p)     the emitted function: submod_0, ... = __vllm_dispatch__[p]
        piece 0           CUDA graph replay
        attention         eager (the splitting op)
        piece 1           CUDA graph replay ...
    outputs               sliced back to n

FULL captures the whole execution function per size instead; FULL_AND_PIECEWISE
uses full graphs up to ``max_full_cudagraph_size`` and piecewise graphs above;
sizes above the largest capture size run the compiled pieces without graphs.

Everything here except :class:`CUDAGraphOps` is plain Python over an injectable
"graph ops" object, so the whole runtime runs on CPU under
:class:`EmulatedGraphOps` (tests, debugging); see docs/cuda_graphs.md.

- ``graph_ops``: capture and replay (CUDA, and the CPU emulation);
- ``padding``: capture sizes, the padding plan, the padded runner;
- ``wrapper``: one graph per piece and size, and the hoisted per-size tables;
- ``manager``: the shared pool, the capture switch, building the runtime.

(The vLLM-style per-piece dispatch the benchmark compares against is
bench/vllm_style.py.)
"""

from .graph_ops import CUDAGraphOps, EmulatedGraphOps, weak_ref_tensor, weak_refs
from .manager import CUDAGraphManager
from .padding import (
    PaddedRunner,
    capture_order,
    check_padding,
    full_graph_limit,
    padding_table,
)
from .padding_plan import (
    CannotPad,
    DynamicInput,
    PaddingPlan,
    input_name,
    plan_padding,
)
from .wrapper import FULL_GRAPH, CUDAGraphTables, CUDAGraphWrapper, call_order

__all__ = [
    "CUDAGraphManager",
    "CUDAGraphOps",
    "CUDAGraphTables",
    "CUDAGraphWrapper",
    "CannotPad",
    "DynamicInput",
    "EmulatedGraphOps",
    "FULL_GRAPH",
    "PaddedRunner",
    "PaddingPlan",
    "call_order",
    "capture_order",
    "check_padding",
    "full_graph_limit",
    "input_name",
    "padding_table",
    "plan_padding",
    "weak_ref_tensor",
    "weak_refs",
]
