"""A model's load for serving: built on the meta device, its weights read on threads.

Every entry point that loads a model from safetensors files goes through
here: the restart of bench/gpu_warm_start.py (the example llama) and
``load_checkpoint`` (``stitch run --model DIR``, transformers' models, through
``from_pretrained`` with the tensors read here: runtime/hf/checkpoint.py).

NOTE: [the order of a model's load]
A restart's first token waits for the model; the model's build was most of
it on an H200 (1.15 s of 1.40 s after ``import torch``): a random init on
the device then overwritten, the KV caches zeroed twice, the weights read
into pageable memory and copied twice.  Here:

1. :func:`start_reading` reads the files' headers and starts a thread that
   creates the CUDA context (for a CUDA device), allocates every tensor where
   it ends and fills it on several threads (:class:`WeightReader`; to a
   device through pinned staging buffers: NOTE: [pinned staging for a
   device]).  Reads release the GIL, so what the caller does next runs
   beside them: ``import stitch.runtime`` and its saved forward's modules,
   transformers' import, the build.
2. :func:`load_model` builds the model with its parameters on the meta
   device and no init, its buffers made on the device by the constructor
   (NOTE: [parameters on meta, buffers where they are made]: the KV caches
   zeroed once), waits until the tensors are allocated (not filled) and puts
   them in the model by name (:func:`place`).
3. :meth:`ModelLoad.wait` waits until every byte is in place.  Before it,
   the model has its final structure, dtypes and devices, but not its
   values: what reads only those (a saved forward's load, keyed by the
   model's structure) may run before ``wait``; a forward, a compile or a
   capture must come after it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .build import build_on_meta, place
from .read import TensorRecord, WeightReader, read_index
from .timeline import Phase, Timeline

__all__ = [
    "ModelLoad",
    "Phase",
    "TensorRecord",
    "Timeline",
    "WeightReader",
    "build_on_meta",
    "load_model",
    "place",
    "read_index",
    "start_reading",
]


def start_reading(
    paths: Sequence[str],
    device: torch.device | str,
    *,
    threads: int | None = None,
    timeline: Timeline | None = None,
) -> WeightReader:
    """Start reading every tensor of the safetensors files ``paths`` into
    tensors on ``device``; the headers are read before this returns, so a
    file that is not safetensors fails here."""
    return WeightReader(read_index(paths), device, threads=threads, timeline=timeline)


@dataclasses.dataclass
class ModelLoad:
    """A model whose tensors are in place, their bytes perhaps still arriving."""

    model: nn.Module
    reader: WeightReader

    def wait(self) -> nn.Module:
        """The model, every tensor filled (raises what a reader raised)."""
        self.reader.wait()
        return self.model


def load_model(
    build: Callable[[], nn.Module],
    reader: WeightReader,
    *,
    fill: Callable[[str, torch.Tensor], torch.Tensor | None] | None = None,
) -> ModelLoad:
    """``build()`` with its parameters on the meta device, given the tensors
    ``reader`` reads (:func:`place`), in eval mode; ``fill(name, meta_tensor)``
    makes what neither the files nor the build make.  The reader's timeline
    gets ``meta build`` and ``KV cache`` (the large buffers the build makes,
    and ``fill``)."""
    timeline = reader.timeline
    with timeline.phase("meta build"):
        model = build_on_meta(build, reader.device, timeline)
    spans: list[tuple[float, float]] = []

    def timed(name: str, meta: torch.Tensor) -> torch.Tensor | None:
        start = time.perf_counter()
        try:
            return fill(name, meta) if fill is not None else None
        finally:
            spans.append((start, time.perf_counter()))

    place(model, reader.tensors(), timed)
    if spans and fill is not None:
        timeline.record("KV cache", spans[0][0], spans[-1][1])
    return ModelLoad(model.eval(), reader)
