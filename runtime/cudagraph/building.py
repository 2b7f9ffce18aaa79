"""The padded runtime of one compilation, planned from its graph and built
from the plan (``CUDAGraphManager.plan`` and ``.build``, which every start
calls: the cold compile, the warm start and a saved function's load)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch.fx as fx

from ..loader import DISPATCH_NAME, compile_execution_fn
from ..settings import CUDAGraphSettings
from ..size import RuntimeSize
from .graph_plan import GraphPlan
from .padding import PaddedRunner, check_padding, full_graph_limit, padding_table
from .padding_plan import CannotPad, plan_padding
from .wrapper import CUDAGraphManager, CUDAGraphTables, FunctionGraphs, call_order

log = logging.getLogger("stitch")


class GraphBuilder(CUDAGraphManager, Protocol):
    """What the build needs of the manager (manager.py's ``CUDAGraphManager``;
    a protocol, so the import goes one way: manager -> building)."""

    def piecewise(
        self,
        plan: GraphPlan,
        *,
        code: str,
        backends: dict[str, Any],
        submod_names: Sequence[str],
        consts: Sequence[Any],
        filename: str | None,
        ranges: Any,
        plain: Callable[..., Any],
    ) -> tuple[Callable[..., Any], Callable[..., Any]]: ...


def plan_graphs(
    config: CUDAGraphSettings,
    graph: fx.GraphModule,
    split_gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    backends: dict[str, Any],
    submod_names: Sequence[str],
    size: RuntimeSize | None,
    compile_sizes: Sequence[int],
) -> GraphPlan | None:
    """What the graphs of one compilation need from its graph (None: no graphs).

    ``graph`` is the graph the backend was given, ``split_gm`` its split
    form, ``example_inputs`` its (fake) inputs and ``size`` the runtime size
    (None when the pieces do not all dispatch on one graph input);
    ``compile_sizes`` the sizes compiled for themselves, which padding must
    be able to produce.
    """
    if not config.cudagraph_capture_sizes:
        return None
    check_padding(config, compile_sizes)
    names = [n.name for n in split_gm.graph.nodes if n.op == "placeholder"]
    try:
        padding = plan_padding(
            graph, example_inputs, names, size, config.cudagraph_pad_values
        )
    except CannotPad as exc:
        log.warning("stitch: running without CUDA graphs: %s", exc)
        return None
    order = call_order(split_gm, backends)
    return GraphPlan(padding, list(submod_names).index(order[-1]) if order else -1)


def build_runner(
    manager: GraphBuilder,
    plan: GraphPlan | None,
    code: str,
    backends: dict[str, Any],
    submod_names: Sequence[str],
    consts: Sequence[Any],
    filename: str | None,
    ranges: Any,
) -> Callable[..., Any]:
    """The execution function with padding and CUDA graphs, from ``plan``:
    a :class:`PaddedRunner` over a full graph per size up to the full-graph
    limit and the piecewise runner above it (``manager.piecewise``, which a
    subclass may replace), or the plain function where there is no plan."""
    config = manager.settings
    plain = compile_execution_fn(
        code, backends, submod_names, consts, filename=filename, ranges=ranges
    )
    if plan is None:
        return plain
    sizes = sorted(config.cudagraph_capture_sizes or ())
    mode = config.cudagraph_mode
    full_limit = full_graph_limit(config)
    piecewise: Callable[..., Any] | None = None
    above_max: Callable[..., Any] = plain
    if any(s > full_limit for s in sizes):
        piecewise, above_max = manager.piecewise(
            plan,
            code=code,
            backends=backends,
            submod_names=submod_names,
            consts=consts,
            filename=filename,
            ranges=ranges,
            plain=plain,
        )
    runners: dict[int, Callable[..., Any]] = {}
    tables = (getattr(piecewise, "__kwdefaults__", None) or {}).get(DISPATCH_NAME)
    graphs = FunctionGraphs(
        manager,
        plain,
        runners,
        [s for s in sizes if s <= full_limit],
        tables if isinstance(tables, CUDAGraphTables) else None,
    )
    for size in sizes:
        if size <= full_limit:
            runners[size] = graphs.full_wrapper(size)
        else:
            assert piecewise is not None  # sizes above full_limit built it
            runners[size] = piecewise
    log.info(
        "stitch: CUDA graphs %s for sizes %s (full graphs up to %d)",
        mode.name,
        sizes,
        full_limit,
    )
    runner = PaddedRunner(plan.padding, padding_table(sizes), runners, above_max)
    runner.graphs = graphs
    return runner
