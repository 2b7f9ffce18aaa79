"""The models bench/gpu_warm_start.py's processes serve: each one's example
call, the dims that vary, its pad values and a step of ``n`` tokens.

Imported by the child processes only, after ``import torch`` is timed, from
bench/ on ``sys.path`` (as ``gpu_serving_model``, which the first process
builds and saves the example llama with).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class WarmSubject:
    """The model a warm-start process serves: its saved forward's example call,
    the dims that vary, and a call of ``n`` tokens."""

    model: Any
    inputs: Callable[[int, int], tuple[tuple[Any, ...], dict[str, Any]]]  # n, seed
    dims: dict[Any, Any]
    pad_values: dict[str, float]
    reset: Callable[[], None]
    # Waits until every weight is in place (a restart's read runs beside the
    # saved forward's load: NOTE: [the order of a model's load]).
    ready: Callable[[], Any] = lambda: None

    def call(self, forward: Callable[..., Any], n: int, seed: int) -> Any:
        """The step's logits, one row per token."""
        args, kwargs = self.inputs(n, seed)
        out = forward(*args, **kwargs)
        return out.logits[:, 0] if hasattr(out, "logits") else out


def example_subject(
    cfg: Any, device: str, weights: str = "", reader: Any = None
) -> WarmSubject:
    """bench/gpu_serving.py's example llama (``forward(ids, positions)``):
    built with random weights, saved to ``weights``, by the first process;
    a restart builds it on the meta device and takes the tensors ``reader``
    (stitch.runtime.weights) reads from that file."""
    import torch

    from stitch.runtime.examples import LlamaModel, llama_inputs

    ready: Callable[[], Any] = lambda: None
    if reader is not None:
        from stitch.runtime.weights import load_model

        load = load_model(lambda: LlamaModel(cfg), reader)
        model, ready = load.model, load.wait
    else:
        from gpu_serving_model import build_model, save_weights

        model = build_model(cfg, torch.device(device))
        if weights:
            save_weights(model, weights)

    def inputs(n: int, seed: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return llama_inputs(cfg, n, seed=seed, device=device), {}

    return WarmSubject(
        model,
        inputs,
        {0: [0], 1: [0]},
        {"positions": -1},
        model.reset_kv_caches,
        ready,
    )


def hf_subject(
    cfg: Any, device: str, folder: str = "", timeline: Any = None
) -> WarmSubject:
    """transformers' LlamaForCausalLM in the token layout, the same shapes
    (``attn_implementation="stitch"``; bench/gpu_serving.py ``--model hf``):
    built with random weights and saved to ``folder`` (``save_pretrained``)
    by the first process; every process loads it from there as ``stitch run
    --model`` does (``load_checkpoint``: the weights read on threads, the
    model built on the meta device by ``from_pretrained``), its phases on
    ``timeline``; without a folder, the random build itself.  ``input_ids``
    and ``position_ids`` share one token count (NOTE: [one size for dims of
    one name] in runtime/saved/arguments.py)."""
    import os

    from gpu_serving_model import build_hf_llama

    from stitch.runtime.hf.serving import (
        PAD_VALUES,
        attach_kv_caches,
        reset_kv_caches,
        serving_inputs,
    )

    if folder and not os.path.isdir(folder):
        # NOTE: [the cold process serves the model as a restart loads it]
        # from_pretrained keeps the rotary frequencies in fp32, where the
        # random build cast them to bf16: a saved forward of the built model
        # would not fit the loaded one (another structure, other numbers).
        build_hf_llama(cfg, device).save_pretrained(folder)
    if folder:
        from stitch.runtime.hf.checkpoint import load_checkpoint

        model = load_checkpoint(
            folder, device=device, attn_implementation="stitch", timeline=timeline
        ).model
        with timeline.phase("KV cache"):
            attach_kv_caches(model, cfg.max_seqs, cfg.max_len)
    else:
        model = build_hf_llama(cfg, device)

    def inputs(n: int, seed: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (), serving_inputs(model, n, seed=seed)

    tokens = {"input_ids": {0: "tokens"}, "position_ids": {0: "tokens"}}
    return WarmSubject(
        model, inputs, tokens, dict(PAD_VALUES), lambda: reset_kv_caches(model)
    )
