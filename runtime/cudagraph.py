"""CUDA graphs for the compiled pieces: padding, capture per size, replay.

One forward of ``n`` tokens on a CUDA device, in PIECEWISE mode::

    PaddedRunner          n -> padded size p (a capture size); dynamic inputs are
                          copied into static buffers in one batched copy
      execution_fn(p)     the emitted function: __vllm_submods__ = __vllm_dispatch__[p]
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
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import dataclasses
import gc
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.fx as fx
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from stitch.codegen.errors import StitchConfigError, StitchError, StitchRuntimeError

from .config import CompilationConfig, CUDAGraphMode
from .counter import compilation_counter
from .dump import progress_bar
from .loader import SizeTables, _bind, compile_execution_fn

log = logging.getLogger("stitch")

FULL_GRAPH = "<full forward>"


# -- sizes ---------------------------------------------------------------------
def padding_table(capture_sizes: Sequence[int]) -> list[int]:
    """``table[n]``: the smallest capture size >= ``n``, for ``0 <= n <= max``.

    A list indexed by ``n`` makes the per-forward padding decision one index
    operation; sizes above the largest capture size have no entry (no graphs).
    """
    sizes = sorted(set(capture_sizes))
    if not sizes:
        return []
    return [sizes[bisect.bisect_left(sizes, n)] for n in range(sizes[-1] + 1)]


def capture_order(sizes: Sequence[int]) -> list[int]:
    """Largest first.

    NOTE: [capture from the largest size down]
    All graphs share one memory pool.  The largest size's graphs reserve the
    most memory; every smaller size then fits into blocks the pool already
    holds, so capturing many sizes costs little more than the largest one.
    """
    return sorted(set(sizes), reverse=True)


def check_padding(config: CompilationConfig) -> None:
    """Compile sizes must be sizes the padding can produce.

    With graphs on, a call of ``n <= max capture size`` runs at the padded size,
    so a compile size below the maximum that is not a capture size would never
    run: the config is inconsistent, not merely wasteful.
    """
    sizes = set(config.cudagraph_capture_sizes or ())
    if not sizes:
        return
    dead = [s for s in config.compile_sizes if s <= max(sizes) and s not in sizes]
    if dead:
        raise StitchConfigError(
            f"CompilationConfig.compile_sizes={config.compile_sizes!r}: size(s) "
            f"{dead} are at most the largest CUDA graph capture size {max(sizes)} "
            "but are not capture sizes, so padding never runs them; add them to "
            "cudagraph_capture_sizes or drop them from compile_sizes"
        )


def _field_error(name: str, value: Any, why: str) -> StitchConfigError:
    return StitchConfigError(f"CompilationConfig.{name}={value!r}: {why}")


def validate_cudagraph_fields(config: CompilationConfig) -> None:
    """The checks of the fields this module adds (called by CompilationConfig).

    Whether compile sizes agree with padding is checked when graphs are actually
    used (:func:`check_padding`): on CPU the capture sizes play no role.
    """
    limit = config.max_full_cudagraph_size
    if limit is not None and (type(limit) is not int or limit < 1):
        raise _field_error(
            "max_full_cudagraph_size", limit, "must be a positive int or None"
        )
    if config.cudagraph_mode is CUDAGraphMode.FULL_AND_PIECEWISE:
        if limit is not None and limit > (config.max_cudagraph_capture_size or 0):
            raise _field_error(
                "max_full_cudagraph_size",
                limit,
                f"exceeds max_cudagraph_capture_size={config.max_cudagraph_capture_size}",
            )
    elif limit is not None:
        raise _field_error(
            "max_full_cudagraph_size",
            limit,
            "is only used with cudagraph_mode=FULL_AND_PIECEWISE (the mode is "
            f"{config.cudagraph_mode.name})",
        )
    pads = config.cudagraph_pad_values
    if not isinstance(pads, dict) or not all(
        isinstance(k, str) and type(v) in (int, float) for k, v in pads.items()
    ):
        raise _field_error(
            "cudagraph_pad_values",
            pads,
            "must map argument names to int or float fill values",
        )


def full_graph_limit(config: CompilationConfig) -> int:
    """The largest padded size captured as one full graph (0: none)."""
    mode = config.cudagraph_mode
    sizes = config.cudagraph_capture_sizes or ()
    if mode is CUDAGraphMode.FULL:
        return max(sizes, default=0)
    if mode is CUDAGraphMode.FULL_AND_PIECEWISE:
        # NOTE: [FULL_AND_PIECEWISE without a limit]
        # Nothing in the config then says where the whole forward cannot be
        # captured, so every capture size gets a full graph (as FULL);
        # max_full_cudagraph_size moves the sizes above it to piecewise graphs.
        limit = config.max_full_cudagraph_size
        return max(sizes, default=0) if limit is None else limit
    return 0


# -- graph operations: real CUDA, and a CPU emulation ----------------------------
def weak_ref_tensor(t: torch.Tensor) -> torch.Tensor:
    """A tensor viewing ``t``'s memory without owning it.

    NOTE: [weak-ref outputs]
    A captured graph's outputs live in the graph pool.  Holding them strongly
    would keep that memory out of the pool for good; a non-owning view lets the
    allocator hand the memory to later captures, while replays still write
    there.  This is what Inductor's cudagraph trees and vLLM do.
    """
    storage = t.untyped_storage()
    weak = torch._C._construct_storage_from_data_pointer(
        storage.data_ptr(), t.device, storage.nbytes()
    )
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        weak, t.storage_offset(), t.shape, t.stride()
    )


def weak_refs(value: Any) -> Any:
    return tree_map(
        lambda x: weak_ref_tensor(x) if isinstance(x, torch.Tensor) else x, value
    )


class CUDAGraphOps:
    """Capture and replay with ``torch.cuda``."""

    needs_cuda = True

    def __init__(self) -> None:
        self._stream: Any = None

    def new_pool(self) -> Any:
        return torch.cuda.graph_pool_handle()

    def capture(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        *,
        pool: Any,
        first: bool,
        weak_output: bool,
    ) -> tuple[Any, Any]:
        # NOTE: [gc and empty_cache only before the first capture]
        # torch.cuda.graph() runs gc.collect() and empty_cache() on every entry;
        # over hundreds of captures that costs seconds and hands the pool's
        # reserved blocks back to the driver.  capture_begin/capture_end directly
        # lets us do both once, before the first capture.
        if first:
            gc.collect()
            torch.cuda.empty_cache()
        torch.cuda.synchronize()
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):
            graph.capture_begin(pool=pool)
            try:
                output = fn(*args)
                if weak_output:
                    # Inside the capture: the strong references die before
                    # capture_end, so the memory returns to the pool at once.
                    output = weak_refs(output)
            except BaseException:
                with contextlib.suppress(Exception):
                    graph.capture_end()
                raise
            graph.capture_end()
        torch.cuda.current_stream().wait_stream(stream)
        return graph, output

    def weak_refs(self, value: Any) -> Any:
        return weak_refs(value)


class _EmulatedGraph:
    """Replays by re-running the captured call on the *captured* arguments and
    copying the results into the captured outputs (same objects, same memory)."""

    def __init__(
        self, fn: Callable[..., Any], args: Sequence[Any], output: Any
    ) -> None:
        self.fn = fn
        self.args = tuple(args)
        self.outputs = [
            x for x in tree_flatten(output)[0] if isinstance(x, torch.Tensor)
        ]
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        fresh = [
            x
            for x in tree_flatten(self.fn(*self.args))[0]
            if isinstance(x, torch.Tensor)
        ]
        with torch.no_grad():
            for dst, src in zip(self.outputs, fresh, strict=True):
                if dst.data_ptr() != src.data_ptr():
                    dst.copy_(src)


class EmulatedGraphOps:
    """A CPU stand-in for CUDA graphs, for tests and debugging without a GPU.

    Like a real graph, a replay reads the tensors that were passed at capture
    time, never the ones passed now, and writes into the outputs it returned at
    capture time; so a runtime that forgets to copy new inputs into its static
    buffers, or lets an address change, computes stale results here too.  Memory
    pools and weak references have no effect (pools are only counted).
    """

    needs_cuda = False

    def __init__(self) -> None:
        self.pools = 0
        self.graphs: list[_EmulatedGraph] = []

    def new_pool(self) -> Any:
        self.pools += 1
        return ("emulated-pool", self.pools)

    def capture(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        *,
        pool: Any,
        first: bool,
        weak_output: bool,
    ) -> tuple[Any, Any]:
        output = fn(*args)
        graph = _EmulatedGraph(fn, args, output)
        self.graphs.append(graph)
        return graph, output

    def weak_refs(self, value: Any) -> Any:
        return value


# -- the manager: pool, capture switch, start-up capture --------------------------
class CUDAGraphManager:
    """What all graphs of one :class:`StitchBackend` share.

    One memory pool for every piece and size, the capture-after-start-up switch,
    and the start-up capture loop (:meth:`capture_sizes`).
    """

    def __init__(
        self,
        config: CompilationConfig,
        *,
        ops: Any = None,
        shared_pool: bool = True,
    ) -> None:
        self.config = config
        self.ops = ops if ops is not None else CUDAGraphOps()
        # False gives every graph its own pool: only for measuring what sharing saves.
        self.shared_pool = shared_pool
        self.capture_allowed = True
        self.num_captured = 0
        self.capture_seconds = 0.0
        self._pool: Any = None
        self._captured_any = False
        # Every padded runner built here, newest last (inspection, benchmarks).
        self.runners: list[PaddedRunner] = []

    # -- decisions -------------------------------------------------------------
    def applies_to(self, example_inputs: Sequence[Any]) -> bool:
        """Graphs are used when the mode asks for them and the graph runs on CUDA."""
        if self.config.cudagraph_mode is CUDAGraphMode.NONE:
            return False
        if not self.ops.needs_cuda:
            return True
        return torch.cuda.is_available() and any(
            isinstance(v, torch.Tensor) and v.device.type == "cuda"
            for v in example_inputs
        )

    # -- the capture switch ------------------------------------------------------
    def forbid_capture(self) -> None:
        self.capture_allowed = False

    def allow_capture(self) -> None:
        self.capture_allowed = True

    def check_capture_allowed(self, piece: str, size: int) -> None:
        if not self.capture_allowed:
            raise StitchRuntimeError(
                f"a CUDA graph of piece {piece} at size {size} would be captured now, "
                "but capture is forbidden after start-up (CompilationConfig."
                "cudagraph_forbid_capture_after_startup=True or CUDAGraphManager."
                "forbid_capture()).  Capture every size the server runs at start-up "
                "with CUDAGraphManager.capture_sizes(run) (capture sizes: "
                f"{self.config.cudagraph_capture_sizes}); a recompilation after "
                "start-up needs its graphs captured too"
            )

    # -- capture -------------------------------------------------------------------
    def capture(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        *,
        piece: str,
        size: int,
        weak_output: bool,
    ) -> tuple[Any, Any]:
        self.check_capture_allowed(piece, size)
        if self.shared_pool:
            if self._pool is None:
                self._pool = self.ops.new_pool()
            pool = self._pool
        else:
            pool = self.ops.new_pool()
        start = time.perf_counter()
        try:
            graph, output = self.ops.capture(
                fn,
                args,
                pool=pool,
                first=not self._captured_any,
                weak_output=weak_output,
            )
        except StitchError:
            raise
        except Exception as exc:
            raise StitchRuntimeError(
                f"capturing the CUDA graph of piece {piece} at size {size} failed: "
                f"{type(exc).__name__}: {exc}.  An op in the piece may not be "
                "capturable (a host sync, a CPU tensor, an allocation outside the "
                "caching allocator); compare with cudagraph_mode='NONE'"
            ) from exc
        self._captured_any = True
        self.num_captured += 1
        self.capture_seconds += time.perf_counter() - start
        compilation_counter.num_cudagraph_captured += 1
        return graph, output

    def capture_sizes(
        self, run: Callable[[int], Any], sizes: Sequence[int] | None = None
    ) -> None:
        """Start-up capture: ``run(size)`` for every capture size, largest first.

        ``run(size)`` must do one forward of ``size`` tokens (dummy inputs are
        fine).  Each size runs ``cudagraph_num_of_warmups`` eager warm-up
        forwards, then the capturing one.  With
        ``cudagraph_forbid_capture_after_startup`` set, capture is forbidden
        afterwards.
        """
        order = capture_order(
            self.config.cudagraph_capture_sizes if sizes is None else sizes
        )
        calls = self.config.cudagraph_num_of_warmups + 1
        bar = progress_bar(
            len(order), "stitch: capturing CUDA graphs", "size", enabled=len(order) >= 8
        )
        before, start = self.num_captured, time.perf_counter()
        try:
            for size in order:
                for _ in range(calls):
                    run(size)
                bar.update(1)
        finally:
            bar.close()
        log.info(
            "stitch: captured %d CUDA graphs for %d sizes in %.2fs",
            self.num_captured - before,
            len(order),
            time.perf_counter() - start,
        )
        if self.config.cudagraph_forbid_capture_after_startup:
            self.forbid_capture()

    # -- building the runtime --------------------------------------------------------
    def wrap(
        self,
        *,
        graph: fx.GraphModule,
        split_gm: fx.GraphModule,
        example_inputs: Sequence[Any],
        code: str,
        backends: dict[str, Any],
        submod_names: Sequence[str],
        consts: Sequence[Any],
        size_on: str | None,
    ) -> Callable[..., Any]:
        """The execution function with padding and CUDA graphs for one compilation.

        ``graph`` is the graph the backend was given, ``split_gm`` its split
        form with the compiled pieces bound, ``example_inputs`` its (fake) inputs
        and ``size_on`` the placeholder that holds the runtime size.
        """
        config = self.config
        plain = compile_execution_fn(code, backends, submod_names, consts)
        sizes = sorted(config.cudagraph_capture_sizes or ())
        if not sizes:
            return plain
        check_padding(config)
        names = [n.name for n in split_gm.graph.nodes if n.op == "placeholder"]
        try:
            plan = plan_padding(
                graph, example_inputs, names, size_on, config.cudagraph_pad_values
            )
        except CannotPad as exc:
            log.warning("stitch: running without CUDA graphs: %s", exc)
            return plain
        order = call_order(split_gm, backends)
        mode = config.cudagraph_mode
        full_limit = full_graph_limit(config)
        piecewise: Callable[..., Any] | None = None
        above_max: Callable[..., Any] = plain
        if any(s > full_limit for s in sizes):
            if config.dispatch == "hoisted":
                tables = CUDAGraphTables(
                    [backends[name] for name in submod_names],
                    self,
                    submod_names,
                    sizes,
                    last=submod_names.index(order[-1]) if order else -1,
                )
                piecewise = compile_execution_fn(
                    code, backends, submod_names, consts, dispatch=tables
                )
            else:
                piecewise, above_max = vllm_style_forward(
                    split_gm, backends, self, plan.size_index, order
                )
        runners: dict[int, Callable[..., Any]] = {}
        for size in sizes:
            if size <= full_limit:
                runners[size] = CUDAGraphWrapper(
                    plain,
                    self,
                    piece=FULL_GRAPH,
                    size=size,
                    weak_output=True,
                    slot=(runners, size),
                )
            else:
                assert piecewise is not None  # sizes above full_limit built it
                runners[size] = piecewise
        log.info(
            "stitch: CUDA graphs %s for sizes %s (full graphs up to %d)",
            mode.name,
            sizes,
            full_limit,
        )
        runner = PaddedRunner(plan, padding_table(sizes), runners, above_max)
        self.runners.append(runner)
        return runner


# -- one graph per piece and size ---------------------------------------------------
def _replayer(replay: Callable[[], None], output: Any) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        replay()
        return output

    return run


class CUDAGraphWrapper:
    """One piece (or the whole forward) at one size: warm up, capture, replay.

    ``slot = (container, key)``: where the dispatch holds this wrapper.  After
    capture the wrapper puts a bare replay closure there (NOTE below).
    """

    def __init__(
        self,
        runnable: Callable[..., Any],
        manager: CUDAGraphManager,
        *,
        piece: str,
        size: int,
        weak_output: bool,
        slot: tuple[Any, Any] | None = None,
    ) -> None:
        config = manager.config
        self.runnable = runnable
        self.manager = manager
        self.piece = piece
        self.size = size
        self.weak_output = weak_output
        self.slot = slot
        self.warmups_left = config.cudagraph_num_of_warmups
        self.check_addresses = config.cudagraph_check_addresses
        self.copy_inputs = config.cudagraph_copy_inputs
        self.graph: Any = None
        self.output: Any = None
        self.addresses: list[tuple[int, int]] = []
        self.static_inputs: list[tuple[int, torch.Tensor]] = []

    def __call__(self, *args: Any) -> Any:
        graph = self.graph
        if graph is None:
            return self._warm_up_or_capture(args)
        if self.check_addresses:
            self._check(args)
        if self.copy_inputs:
            self._copy(args)
        graph.replay()
        return self.output

    def _warm_up_or_capture(self, args: tuple[Any, ...]) -> Any:
        manager = self.manager
        manager.check_capture_allowed(self.piece, self.size)
        if self.warmups_left > 0:
            self.warmups_left -= 1
            return self.runnable(*args)
        graph, output = manager.capture(
            self.runnable,
            args,
            piece=self.piece,
            size=self.size,
            weak_output=self.weak_output,
        )
        self.graph = graph
        self.output = manager.ops.weak_refs(output)
        tensors = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        self.addresses = [(i, a.data_ptr()) for i, a in tensors]
        if self.copy_inputs:
            self.static_inputs = [(i, manager.ops.weak_refs(a)) for i, a in tensors]
        # Capturing records the kernels without running them: run them once for
        # this call.
        graph.replay()
        if self.slot is not None and not (self.check_addresses or self.copy_inputs):
            # NOTE: [replay closures in the dispatch tables]
            # Once captured, a piece at a size only ever replays; the table the
            # emitted function indexes then holds a closure that does exactly
            # that, with no attribute lookups or state checks per call.
            container, key = self.slot
            container[key] = _replayer(graph.replay, self.output)
        # An intermediate piece returns its strong outputs from the capture: the
        # stitching code holds them until their last use, which keeps later
        # captures of this forward from reusing their memory too early.
        return output

    def _check(self, args: tuple[Any, ...]) -> None:
        for i, address in self.addresses:
            arg = args[i] if i < len(args) else None
            now = arg.data_ptr() if isinstance(arg, torch.Tensor) else None
            if now != address:
                shown = "not a tensor" if now is None else f"at {now:#x}"
                raise StitchRuntimeError(
                    f"piece {self.piece} at size {self.size}: argument {i} is {shown}, "
                    f"but the CUDA graph was captured with it at {address:#x}; a "
                    "replay would read stale memory.  Inputs of captured pieces "
                    "must keep their addresses (parameters, static input buffers, "
                    "outputs of earlier pieces); a splitting op that allocates its "
                    "output breaks this: make it write into a preallocated tensor, "
                    "or set cudagraph_copy_inputs=True"
                )

    def _copy(self, args: tuple[Any, ...]) -> None:
        for i, static in self.static_inputs:
            arg = args[i]
            if arg.data_ptr() != static.data_ptr():
                static.copy_(arg)


class CUDAGraphTables(SizeTables):
    """``__vllm_dispatch__`` with graphs: capture sizes get graph wrappers.

    Other sizes (above the largest capture size) get the compiled runnables,
    as in :class:`SizeTables`.
    """

    def __init__(
        self,
        callables: Sequence[Any],
        manager: CUDAGraphManager,
        names: Sequence[str],
        capture_sizes: Sequence[int],
        *,
        last: int,
    ) -> None:
        super().__init__(callables)
        self.manager = manager
        self.names = list(names)
        self.capture_sizes = frozenset(capture_sizes)
        self.last = last

    def __missing__(self, size: Any) -> list[Any]:
        size = int(size)
        if size not in self.capture_sizes:
            return super().__missing__(size)
        table: list[Any] = []
        for i, c in enumerate(self.callables):
            runnable = c.runnable_for(size) if hasattr(c, "runnable_for") else _bind(c)
            table.append(
                CUDAGraphWrapper(
                    runnable,
                    self.manager,
                    piece=self.names[i],
                    size=size,
                    weak_output=i == self.last,
                    slot=(table, i),
                )
            )
        self[size] = table
        return table


def call_order(split_gm: fx.GraphModule, backends: dict[str, Any]) -> list[str]:
    """The compiled pieces in the order the split graph calls them."""
    return [
        n.target
        for n in split_gm.graph.nodes
        if n.op == "call_module" and n.target in backends
    ]


# -- padding ------------------------------------------------------------------------
class CannotPad(Exception):
    """The graph's inputs or outputs do not have the shape padding needs."""


@dataclasses.dataclass(frozen=True)
class DynamicInput:
    index: int
    name: str
    rest: tuple[int, ...]  # the static dims after the token dim
    dtype: torch.dtype
    device: torch.device
    pad: float


@dataclasses.dataclass(frozen=True)
class PaddingPlan:
    size_index: int  # the argument holding n
    size_indices: tuple[int, ...]  # every runtime-size argument
    dynamic: tuple[DynamicInput, ...]  # tensors whose dim 0 is the token count
    slice_outputs: tuple[bool, ...]  # per output leaf: dim 0 is the token count
    flat_output: bool  # the graph returns a flat tuple/list of values


def input_name(node: fx.Node) -> str:
    """The forward argument a placeholder comes from (``positions``), else its name."""
    source = getattr(node.meta.get("grapharg"), "source", None)
    name = getattr(source, "local_name", None)
    return name if isinstance(name, str) else node.name


def _symbol(value: Any) -> Any:
    expr = value.node.expr
    return expr if getattr(expr, "is_Symbol", False) else None


def plan_padding(
    graph: fx.GraphModule,
    example_inputs: Sequence[Any],
    names: Sequence[str],
    size_on: str | None,
    pad_values: dict[str, float],
) -> PaddingPlan:
    """Which arguments are sizes, which tensors get padded, which outputs sliced.

    Padding needs every symbolic dimension to be the token count: a runtime-size
    argument, or dim 0 of a contiguous input or output whose other dims are
    static.  Raises :class:`CannotPad` otherwise.
    """
    if size_on is None:
        raise CannotPad("the graph has no runtime-size input that every piece shares")
    if len(names) != len(example_inputs):
        raise CannotPad(f"{len(names)} placeholders but {len(example_inputs)} inputs")
    placeholders = [n for n in graph.graph.nodes if n.op == "placeholder"]
    labels = (
        [input_name(n) for n in placeholders]
        if len(placeholders) == len(names)
        else list(names)
    )
    sizes: list[int] = []
    symbols = set()
    for i, value in enumerate(example_inputs):
        if isinstance(value, torch.SymInt):
            symbol = _symbol(value)
            if symbol is None:
                raise CannotPad(f"size input {labels[i]} is {value}, not a plain size")
            sizes.append(i)
            symbols.add(symbol)
    size_index = list(names).index(size_on)
    if size_index not in sizes:
        raise CannotPad(f"the dispatch input {size_on} is not a runtime size")

    def token_dim(value: torch.Tensor, what: str, *, contiguous: bool) -> bool:
        """True when dim 0 is the token count; False when all dims are static."""
        shape = list(value.shape)
        dynamic = [d for d, s in enumerate(shape) if isinstance(s, torch.SymInt)]
        if not dynamic:
            return False
        if dynamic != [0] or _symbol(shape[0]) not in symbols:
            raise CannotPad(
                f"{what} has shape {tuple(shape)}: only dim 0 may be dynamic"
            )
        # An input is copied into a contiguous static buffer: its strides must be
        # those the compiled code expects of it.
        rest = [math.prod(shape[d + 1 :]) for d in range(1, len(shape))]
        if contiguous and list(value.stride()[1:]) != rest:
            raise CannotPad(f"{what} is not contiguous (strides {value.stride()})")
        return True

    dynamic: list[DynamicInput] = []
    for i, value in enumerate(example_inputs):
        if isinstance(value, torch.Tensor) and token_dim(
            value, f"input {labels[i]}", contiguous=True
        ):
            pad = pad_values.get(labels[i], pad_values.get(names[i], 0))
            dynamic.append(
                DynamicInput(
                    i,
                    labels[i],
                    tuple(int(s) for s in value.shape[1:]),
                    value.dtype,
                    value.device,
                    pad,
                )
            )
    unused = sorted(
        set(pad_values) - {d.name for d in dynamic} - {names[d.index] for d in dynamic}
    )
    if unused:
        log.warning(
            "stitch: cudagraph_pad_values names %s, which are not dynamic inputs of "
            "this graph (dynamic inputs: %s)",
            unused,
            [d.name for d in dynamic],
        )
    output = next(n for n in graph.graph.nodes if n.op == "output")
    leaves, _ = tree_flatten(output.args[0])
    slice_outputs = []
    for j, leaf in enumerate(leaves):
        value = (
            leaf.meta.get("example_value", leaf.meta.get("val"))
            if isinstance(leaf, fx.Node)
            else leaf
        )
        if isinstance(value, torch.SymInt):
            raise CannotPad(f"output {j} is a runtime size ({value})")
        if isinstance(leaf, fx.Node) and value is None:
            raise CannotPad(f"output {j} ({leaf.name}) has no example value")
        slice_outputs.append(
            isinstance(value, torch.Tensor)
            and token_dim(value, f"output {j}", contiguous=False)
        )
    result = output.args[0]
    flat = isinstance(result, (tuple, list)) and not any(
        isinstance(r, (tuple, list, dict)) for r in result
    )
    return PaddingPlan(
        size_index, tuple(sizes), tuple(dynamic), tuple(slice_outputs), flat
    )


class PaddedRunner:
    """The function the backend returns when graphs are on.

    Pads ``n`` to the smallest capture size ``p >= n`` (one index into the
    padding table), copies the dynamic inputs into static buffers of ``p`` rows
    with one batched copy (rows ``n..p-1`` get the input's pad value), runs the
    runner for ``p`` and slices the outputs back to ``n``.

    NOTE: [outputs live until the next forward]
    Under graphs the outputs are views of graph memory that the next forward
    overwrites (as in vLLM); clone what must outlive it.
    """

    def __init__(
        self,
        plan: PaddingPlan,
        padding: list[int],
        runners: dict[int, Callable[..., Any]],
        above_max: Callable[..., Any],
    ) -> None:
        self.plan = plan
        self.padding = padding
        self.max_size = len(padding) - 1
        self.runners = runners
        self.above_max = above_max
        self.size_index = plan.size_index
        self.dynamic_indices = [d.index for d in plan.dynamic]
        gap = max((p - n for n, p in enumerate(padding)), default=0)
        # Normal tensors even when built under inference_mode: those may be
        # updated in place in any mode.
        with torch.inference_mode(False):
            self.buffers = [
                torch.empty((self.max_size, *d.rest), dtype=d.dtype, device=d.device)
                for d in plan.dynamic
            ]
            self.pad_blocks = [
                torch.full((gap, *d.rest), d.pad, dtype=d.dtype, device=d.device)
                for d in plan.dynamic
            ]
        self.flat_output = plan.flat_output
        self._steps: dict[int, tuple[Any, ...]] = {}

    def _step(self, n: int) -> tuple[Any, ...]:
        """Everything a call of ``n`` tokens needs, built once per ``n``."""
        p = self.padding[n]
        dsts = [b[:n] for b in self.buffers]
        pads: list[torch.Tensor] = []
        if p > n:
            dsts += [b[n:p] for b in self.buffers]
            pads = [block[: p - n] for block in self.pad_blocks]
        fixed = [(i, p) for i in self.plan.size_indices] + [
            (d.index, b[:p]) for d, b in zip(self.plan.dynamic, self.buffers)
        ]
        step = (p, dsts, pads, fixed)
        self._steps[n] = step
        return step

    def __call__(self, *args: Any) -> Any:
        n = args[self.size_index]
        if n > self.max_size:
            return self.above_max(*args)
        step = self._steps.get(n)
        if step is None:
            step = self._step(n)
        p, dsts, pads, fixed = step
        if dsts:
            try:
                torch._foreach_copy_(
                    dsts, [args[i] for i in self.dynamic_indices] + pads
                )
            except RuntimeError as exc:
                raise self._input_error(args, n, exc) from exc
        call_args = list(args)
        for i, value in fixed:
            call_args[i] = value
        out = self.runners[p](*call_args)
        if p == n:
            return out
        return self._slice(out, n)

    def _slice(self, out: Any, n: int) -> Any:
        plan = self.plan.slice_outputs
        if (
            self.flat_output
            and isinstance(out, (tuple, list))
            and len(out) == len(plan)
        ):
            return type(out)(o[:n] if s else o for o, s in zip(out, plan))
        leaves, spec = tree_flatten(out)
        if len(leaves) != len(plan):
            raise StitchRuntimeError(
                f"the padded forward returned {len(leaves)} values; the graph "
                f"declares {len(plan)}"
            )
        return tree_unflatten([o[:n] if s else o for o, s in zip(leaves, plan)], spec)

    def _input_error(
        self, args: tuple[Any, ...], n: int, exc: Exception
    ) -> StitchError:
        for d, buffer in zip(self.plan.dynamic, self.buffers):
            arg = args[d.index]
            if not isinstance(arg, torch.Tensor) or tuple(arg.shape) != (n, *d.rest):
                shape = (
                    tuple(arg.shape)
                    if isinstance(arg, torch.Tensor)
                    else type(arg).__name__
                )
                return StitchRuntimeError(
                    f"input {d.name} has shape {shape}, but the runtime size is {n}: "
                    f"every dynamic input must have {n} rows and trailing dims {d.rest}"
                )
        return StitchRuntimeError(
            f"copying the inputs into the static buffers failed: {exc}"
        )


# -- the vLLM-style per-piece path (benchmark baseline) -------------------------------
# NOTE: [the vLLM-style baseline]
# vLLM stitches the pieces with the split GraphModule's own forward; each piece
# is a wrapper that looks up a process-wide forward context for the batch
# descriptor, hashes it into its own table of graphs and replays (or calls the
# piecewise backend, which scans its compile ranges).  That path is rebuilt here,
# with the same padding in front, so the benchmark can measure what the hoisted
# dispatch saves.  CompilationConfig(dispatch="per_piece") selects it.
class BatchDescriptor(NamedTuple):
    num_tokens: int
    uniform_decode: bool = False


@dataclasses.dataclass
class ForwardContext:
    batch_descriptor: BatchDescriptor | None
    cudagraph_runtime_mode: CUDAGraphMode


class ForwardContexts:
    """vLLM's ``set_forward_context`` / ``get_forward_context`` as an object."""

    def __init__(self) -> None:
        self._current: ForwardContext | None = None

    def get(self) -> ForwardContext:
        if self._current is None:
            raise StitchRuntimeError("a piece ran outside a forward context")
        return self._current

    @contextlib.contextmanager
    def set(
        self, descriptor: BatchDescriptor | None, mode: CUDAGraphMode
    ) -> Iterator[None]:
        previous = self._current
        self._current = ForwardContext(descriptor, mode)
        try:
            yield
        finally:
            self._current = previous


class VllmStyleCUDAGraphWrapper:
    """One piece: forward-context lookup, per-descriptor graph table, replay."""

    def __init__(
        self,
        runnable: Callable[..., Any],
        manager: CUDAGraphManager,
        contexts: ForwardContexts,
        *,
        piece: str,
        weak_output: bool,
    ) -> None:
        self.runnable = runnable
        self.manager = manager
        self.contexts = contexts
        self.piece = piece
        self.weak_output = weak_output
        self.entries: dict[BatchDescriptor, CUDAGraphWrapper] = {}

    def __call__(self, *args: Any) -> Any:
        context = self.contexts.get()
        descriptor = context.batch_descriptor
        if (
            context.cudagraph_runtime_mode is not CUDAGraphMode.PIECEWISE
            or descriptor is None
        ):
            return self.runnable(*args)
        entry = self.entries.get(descriptor)
        if entry is None:
            entry = self.entries[descriptor] = CUDAGraphWrapper(
                self.runnable,
                self.manager,
                piece=self.piece,
                size=descriptor.num_tokens,
                weak_output=self.weak_output,
            )
        return entry(*args)


class VllmStyleForward:
    """The split GraphModule's forward under a forward context (vLLM's model runner)."""

    def __init__(
        self,
        split_gm: fx.GraphModule,
        contexts: ForwardContexts,
        size_index: int,
        mode: CUDAGraphMode,
    ) -> None:
        self.split_gm = split_gm
        self.contexts = contexts
        self.size_index = size_index
        self.mode = mode

    def __call__(self, *args: Any) -> Any:
        descriptor = (
            BatchDescriptor(args[self.size_index])
            if self.mode is not CUDAGraphMode.NONE
            else None
        )
        with self.contexts.set(descriptor, self.mode):
            return self.split_gm(*args)


def vllm_style_forward(
    split_gm: fx.GraphModule,
    backends: dict[str, Any],
    manager: CUDAGraphManager,
    size_index: int,
    order: Sequence[str],
) -> tuple[VllmStyleForward, VllmStyleForward]:
    """``(with graphs, without graphs)`` forwards over a copy of ``split_gm``."""
    gm = copy.copy(split_gm)
    contexts = ForwardContexts()
    last = order[-1] if order else None
    for name, backend in backends.items():
        gm.__dict__[name] = VllmStyleCUDAGraphWrapper(
            backend, manager, contexts, piece=name, weak_output=name == last
        )
    return (
        VllmStyleForward(gm, contexts, size_index, CUDAGraphMode.PIECEWISE),
        VllmStyleForward(gm, contexts, size_index, CUDAGraphMode.NONE),
    )
