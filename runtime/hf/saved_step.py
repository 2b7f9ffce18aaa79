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

from ..saved.aot import AOTCompiledModel, aot_compile
from .attention import _short
from .engine_compat import ENGINE_KEYWORDS, PAGED_CACHE, cache_layout, untested_failure

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
        self.model = model
        self.backend = backend
        self.original = type(model).forward.__get__(model)
        # The engine asks the forward's signature whether it takes logits_to_keep.
        self.__signature__ = inspect.signature(self.original)
        # By cache layout: the saved forward of each cache the engine built.
        self.steps: dict[str, AOTCompiledModel] = {}
        # By cache object, so that a step does not build the layout string.
        self.by_cache: weakref.WeakKeyDictionary[Any, AOTCompiledModel] = (
            weakref.WeakKeyDictionary()
        )
        self.cache_type = paged_cache_type()

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
            layout = cache_layout(cache)
            step = self.steps.get(layout)
            if step is None:
                step = self.steps[layout] = self.load_or_compile(inputs, layout)
            self.by_cache[cache] = step
        logits = step(**inputs)
        return CausalLMOutputWithPast(logits=logits)

    def load_or_compile(self, inputs: dict[str, Any], layout: str) -> AOTCompiledModel:
        """Load the saved forward for this cache layout, or compile and save it."""
        # The tensors inside the containers vary too; marks on them last as
        # long as these views (the engine slices new ones every step).
        from ..compat import dynamo

        dims = dict(DYNAMIC)
        for name, varying in CONTAINED.items():
            value = inputs[name]
            if isinstance(value, torch.Tensor):
                dims[name] = varying
                continue
            if value is None:
                continue
            for t in value.values() if isinstance(value, dict) else value:
                for d in set(varying) - dynamo.marked_dims(t):
                    dynamo.mark_unbacked(t, d)
        compiling = _compile_thread().submit(
            _aot_compile, PagedStep(self.model, layout), inputs, dims, self.backend
        )
        try:
            step = compiling.result()
        except Exception as error:
            # NOTE: [the tested transformers range] in engine_compat.py
            untested_failure(error)
            raise
        log.info(
            "stitch: %s's engine forward %s in %.2fs",
            type(self.model).__name__,
            "loaded warm" if step.warm else "compiled",
            step.seconds,
        )
        return step


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


def paged_cache_type() -> type:
    from transformers.generation.continuous_batching.cache import (
        PagedAttentionCache,
    )

    return PagedAttentionCache


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
