"""The engine's model call as a Stitch saved forward: a warm process never runs Dynamo.

NOTE: [the engine calls a saved forward]
transformers' engine compiles its step with ``torch.compile`` when a
``CompileConfig`` is given, so every process traces the whole step (about 10 s
for a 4-layer Llama on CPU, and as long again after each new engine).  Stitch's
``aot_compile`` saves what Dynamo produced and loads it in a new process with
no tracing (NOTE: [warm start without Dynamo] in saved/aot.py); the engine
cannot call it through ``torch.compile``.  So :func:`install_engine_forward` gives the model
an instance ``forward`` (:class:`EngineForward`, the model's own signature):
the engine runs with no compile config, and its one model call per step,
``model(**batch)`` with the paged cache, goes to the saved forward of
:class:`PagedStep`; every other call of the model goes to its class's
``forward`` unchanged.  The engine's sampling (an argmax or a multinomial, and
its log-probabilities) stays eager around it.  Without a compile config the
engine does not pad its batches: the token, sequence and key counts are
dynamic dimensions of one graph (``mark_unbacked``, 0 and 1 included).

NOTE: [what keys the engine's saved forward]
A saved forward is checked by its inputs' dtypes, ranks and dynamic dims, and
by the structure of the module compiled (saved/record.py, record_folder).  The
paged cache's rows are read through the ``cache`` argument (its allocators'
key and value views), not passed as tensors, so the cache's layout is what
:class:`PagedStep` holds as a plain attribute: per layer its group, layer
type, sliding window, sentinel row, rows, heads, head size and dtype
(engine_compat.cache_layout).  Another ``num_blocks``, page size or dtype is another record.

NOTE: [the engine serves while Dynamo traces]
With a cold cache, Dynamo's trace of the engine's forward takes seconds (4.7 s
of the 7.6 s by which transformers' server answered after the eager one, on
2 cores: docs/performance.md).  Where the backend asks for a tiered start
(``pipeline.api.asks_tiered``: NOTE: [where a tiered start is the default]),
the first call of a cache layout hands the compile to the compile thread and
does not wait: until it is done, each step runs the model's own forward with
the engine's arguments, which is transformers' eager engine (its paged
attention writes the same cache rows as Stitch's op, so the steps after the
switch read what the eager ones wrote); the next step after it runs the saved
forward, whose pieces then swap in as in any tiered start.  The trace reads
the first step's inputs only for their metadata (torch's ``aot_compile``
traces with fake tensors and runs nothing), so the engine may go on writing
its buffers meanwhile.  Without a tiered start the step waits, as before: the
engine's own CUDA graphs would capture an eager step for good (a tiered start
with them is refused).  ``steps`` waits for a trace under way, so code that
reads it after ``generate_batch`` sees the saved forward; a process that
exits first waits for the trace and then for its workers (NOTE: [a process
that exits normally waits for its workers]).  A failed compile is raised in
the step that finds it, as a waited-for compile raises in its own.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import inspect
import logging
import weakref
from typing import Any

import torch

from stitch.core.errors import StitchConfigError, StitchRuntimeError

from ..pipeline.tiered.controls import asks_tiered, finish_before_exit
from ..saved.aot import AOTCompiledModel, aot_compile
from .attn_implementation import _short
from .engine_compat import ENGINE_KEYWORDS, PAGED_CACHE, cache_layout, untested_failure
from .trace_apart import containers_copy, structure_copy

log = logging.getLogger("stitch")

# Each tensor's dimensions that vary from step to step.
DYNAMIC = {"input_ids": [1], "position_ids": [1], "cu_seq_lens_q": [0]}
# The same for arguments that may come as a dict or list of tensors (by layer
# type or by allocator), as one tensor (the mask and 5.17's key boundaries of a
# model with one layer type), or as None (logits_to_keep).
CONTAINED = {
    "logits_to_keep": [0],
    "attention_mask": [2, 3],
    "cu_seq_lens_k": [0],
    "read_index": [0],
    "write_index": [0],
}


class PagedStep(torch.nn.Module):
    """The model's forward over one batch of transformers' engine, returning its logits."""

    def __init__(self, model: torch.nn.Module, layout: str) -> None:
        super().__init__()
        self.model = model
        # A plain attribute: part of the record's key.
        self.cache_layout = layout

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cu_seq_lens_q: torch.Tensor,
        logits_to_keep: torch.Tensor | None,
        attention_mask: torch.Tensor | dict[str, torch.Tensor],
        cu_seq_lens_k: torch.Tensor | dict[str, torch.Tensor],
        read_index: list[torch.Tensor],
        write_index: list[torch.Tensor],
        cache: Any,
    ) -> torch.Tensor:
        model = self.model
        # Only when the engine passed it (the model's forward takes it).
        keep = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
        output = type(model).forward(
            model,
            input_ids=input_ids,
            position_ids=position_ids,
            # The engine's mask: the model takes it as prepared (and builds
            # none); the paged op reads the boundaries instead.
            attention_mask=attention_mask,
            cu_seq_lens_q=cu_seq_lens_q,
            cu_seq_lens_k=cu_seq_lens_k,
            read_index=read_index,
            write_index=write_index,
            # Under Stitch's keyword, not as cache=: only the paged op writes
            # the cache (NOTE: [transformers' engine across versions]).
            **{PAGED_CACHE: cache},
            use_cache=False,
            **keep,
        )
        return output.logits


class EngineForward:
    """``model.forward`` while Stitch serves the engine (NOTE: [the engine calls a
    saved forward]): the engine's paged calls run the saved :class:`PagedStep`,
    every other call the model's own ``forward``."""

    def __init__(self, model: torch.nn.Module, backend: Any) -> None:
        from transformers.generation.continuous_batching.cache import (
            PagedAttentionCache,
        )

        self.model = model
        self.backend = backend
        self.original = _class_forward(model)
        # The engine asks the forward's signature whether it takes logits_to_keep.
        self.__signature__ = inspect.signature(self.original)
        # By cache layout: the saved forward of each cache the engine built,
        # and the compiles under way (NOTE: [the engine serves while Dynamo traces]).
        self._steps: dict[str, AOTCompiledModel] = {}
        self.tracing: dict[str, concurrent.futures.Future[AOTCompiledModel]] = {}
        # By cache object, so that a step does not build the layout string.
        self.by_cache: weakref.WeakKeyDictionary[Any, AOTCompiledModel] = (
            weakref.WeakKeyDictionary()
        )
        self.cache_type = PagedAttentionCache

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled (torch.save of the model, Dynamo saving its guards), the
        # model's forward is its class's again: the backend and its compiled
        # pieces are this process's, and are not saved.
        return (_class_forward, (self.model,))

    def __deepcopy__(self, memo: dict[int, Any]) -> EngineForward:
        # A copy of the model gets an engine forward of its own.
        return EngineForward(copy.deepcopy(self.model, memo), self.backend)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        cache = kwargs.get("cache")
        if args or not isinstance(cache, self.cache_type):
            return self.original(*args, **kwargs)
        return self.paged(kwargs, cache)

    def paged(self, kwargs: dict[str, Any], cache: Any) -> Any:
        from transformers.modeling_outputs import CausalLMOutputWithPast

        if kwargs.get("block_table") is not None:
            raise StitchRuntimeError(
                f"block_table={_short(kwargs['block_table'])}: flash's decode fast "
                "path, which Stitch's engine forward does not take "
                "(continuous_batching_config sets max_blocks_per_request=0)"
            )
        inputs = {
            "input_ids": kwargs["input_ids"],
            "position_ids": kwargs["position_ids"],
            "cu_seq_lens_q": kwargs["cu_seq_lens_q"],
            # The engine passes it when the model's forward takes it (then the
            # logits are those of logits_indices); else it slices them itself.
            "logits_to_keep": kwargs.get("logits_to_keep"),
            "attention_mask": kwargs["attention_mask"],
            "cu_seq_lens_k": kwargs["cu_seq_lens_k"],
            "read_index": kwargs["read_index"],
            "write_index": kwargs["write_index"],
            "cache": cache,
        }
        # NOTE: [the engine's keywords] in engine_compat.py
        unknown = set(kwargs) - set(ENGINE_KEYWORDS)
        if unknown:
            name = sorted(unknown)[0]
            raise StitchRuntimeError(
                f"the engine passes {name}={_short(kwargs[name])}, which Stitch's "
                "engine forward does not know (another transformers version?)"
            )
        step = self.by_cache.get(cache)
        if step is None:
            step = self.step_for(inputs, cache)
            if step is None:  # NOTE: [the engine serves while Dynamo traces]
                return self.original(**kwargs)
        logits = step(**inputs)
        return CausalLMOutputWithPast(logits=logits)

    @property
    def steps(self) -> dict[str, AOTCompiledModel]:
        """The saved forward of each cache layout, once its compile or load
        under way has ended (NOTE: [the engine serves while Dynamo traces])."""
        for layout in list(self.tracing):
            self.finished(layout)
        return self._steps

    def compiling(self) -> bool:
        """Whether a compile or load of a saved forward is under way (NOTE:
        [the engine serves while Dynamo traces])."""
        return any(not c.done() for c in list(self.tracing.values()))

    def step_for(self, inputs: dict[str, Any], cache: Any) -> AOTCompiledModel | None:
        """The saved forward for ``cache``: loaded or compiled now, or None
        while it compiles off the engine's thread."""
        layout = cache_layout(cache)
        if layout not in self._steps:
            compiling = self.tracing.get(layout)
            if compiling is None:
                meanwhile = self.serves_meanwhile(inputs)
                compiling = self.load_or_compile(inputs, layout, apart=meanwhile)
                self.tracing[layout] = compiling
                if meanwhile:
                    finish_before_exit(compiling, self.label)
                else:
                    concurrent.futures.wait([compiling])
            if not compiling.done():
                return None
            self.finished(layout)
        step = self.by_cache[cache] = self._steps[layout]
        return step

    def serves_meanwhile(self, inputs: dict[str, Any]) -> bool:
        """Whether the engine's steps run the model's own forward while the
        saved forward compiles: where the backend asks for a tiered start
        (NOTE: [the engine serves while Dynamo traces])."""
        config = getattr(self.backend, "config", None)
        if config is None or not asks_tiered(config, (inputs["input_ids"],)):
            return False
        log.info(
            "stitch: %s compiles off the engine's thread; the model's own forward "
            "serves meanwhile",
            self.label,
        )
        return True

    @property
    def label(self) -> str:
        return f"{type(self.model).__name__}'s engine forward"

    def finished(self, layout: str) -> None:
        """Move the compile of ``layout`` into ``_steps`` once it has ended
        (waiting for it), raising what it raised; the engine's thread and a
        reader of ``steps`` may both call it."""
        compiling = self.tracing.get(layout)
        if compiling is None:
            return  # moved by the other
        try:
            step = compiling.result()
        except Exception as error:
            self.tracing.pop(layout, None)  # the next step compiles again
            # NOTE: [the tested transformers range] in engine_compat.py
            untested_failure(error)
            raise
        self._steps[layout] = step
        self.tracing.pop(layout, None)
        log.info(
            "stitch: %s %s in %.2fs",
            self.label,
            "loaded warm" if step.warm else "compiled",
            step.seconds,
        )

    def load_or_compile(
        self, inputs: dict[str, Any], layout: str, apart: bool = False
    ) -> concurrent.futures.Future[AOTCompiledModel]:
        """Load the saved forward for this cache layout, or compile and save
        it, in the compile thread (NOTE: [one thread compiles the engine's
        forwards]); ``apart``: for a copy of the model and of the inputs'
        containers, while the engine runs the model (NOTE: [a trace beside
        the model's own forward])."""
        # The tensors inside the containers vary too; marks on them last as
        # long as these views (the engine slices new ones every step).
        from ..compat import dynamo

        dims = dict(DYNAMIC)
        for name, varying in CONTAINED.items():
            value = inputs[name]
            if isinstance(value, torch.Tensor):
                dims[name] = varying
            elif value is not None:
                for t in value.values() if isinstance(value, dict) else value:
                    for d in set(varying) - dynamo.marked_dims(t):
                        dynamo.mark_unbacked(t, d)
        model = self.model
        if apart:
            model, inputs = structure_copy(model), containers_copy(inputs)
        return _compile_thread().submit(
            _aot_compile, PagedStep(model, layout), inputs, dims, self.backend
        )


def _aot_compile(
    step: PagedStep, inputs: dict[str, Any], dims: dict[str, Any], backend: Any
) -> AOTCompiledModel:
    with torch.no_grad():
        return aot_compile(
            step, example_kwargs=inputs, dynamic_dims=dims, backend=backend
        )


@functools.cache
def _compile_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread every engine forward of the process compiles in.

    NOTE: [one thread compiles the engine's forwards]
    The engine calls the model from a generation thread of its own, a new one
    for every engine.  torch 2.11 crashes (a segmentation fault in
    ``FakeTensorMode.__enter__``) when a second engine's thread traces after a
    first one's has ended; one long-lived thread for every compile does not.
    The engine's thread waits for the result, as it would for a compile of
    its own.
    """
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="stitch-engine-compile"
    )


def _class_forward(model: torch.nn.Module) -> Any:
    return type(model).forward.__get__(model)


def install_engine_forward(model: torch.nn.Module, backend: Any) -> EngineForward:
    """Give ``model`` the engine forward of ``backend`` (once; another backend
    replaces it)."""
    current = model.__dict__.get("forward")
    if isinstance(current, EngineForward) and current.backend is backend:
        return current
    if current is not None and not isinstance(current, EngineForward):
        raise StitchConfigError(
            f"{type(model).__name__} has a forward of its own "
            f"({_short(current)}); Stitch's engine forward would replace it"
        )
    engine_forward = EngineForward(model, backend)
    model.forward = engine_forward
    return engine_forward
