"""The models bench/gpu_warm_start.py's processes serve: each one's example
call, the dims that vary, its pad values and a step of ``n`` tokens.

Imported by the child processes only, after ``import torch`` is timed, from
bench/ on ``sys.path`` (as ``gpu_serving_model``).
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

    def call(self, forward: Callable[..., Any], n: int, seed: int) -> Any:
        """The step's logits, one row per token."""
        args, kwargs = self.inputs(n, seed)
        out = forward(*args, **kwargs)
        return out.logits[:, 0] if hasattr(out, "logits") else out


def example_subject(cfg: Any, device: str, weights: str = "") -> WarmSubject:
    """bench/gpu_serving.py's example llama (``forward(ids, positions)``):
    built with random weights, saved to ``weights``, by the first process;
    read from there by a restart (``gpu_serving_model.restarted_model``)."""
    import os

    import torch
    from gpu_serving_model import build_model, restarted_model, save_weights

    from stitch.runtime.examples import llama_inputs

    if weights and os.path.exists(weights):
        model = restarted_model(cfg, torch.device(device), weights)
    else:
        model = build_model(cfg, torch.device(device))
        if weights:
            save_weights(model, weights)

    def inputs(n: int, seed: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return llama_inputs(cfg, n, seed=seed, device=device), {}

    return WarmSubject(
        model, inputs, {0: [0], 1: [0]}, {"positions": -1}, model.reset_kv_caches
    )


def hf_subject(cfg: Any, device: str) -> WarmSubject:
    """transformers' LlamaForCausalLM in the token layout, the same shapes
    (``attn_implementation="stitch"``; bench/gpu_serving.py ``--model hf``).
    ``input_ids`` and ``position_ids`` share one token count (NOTE: [one size
    for dims of one name] in runtime/saved/arguments.py)."""
    from gpu_serving_model import build_hf_llama

    from stitch.runtime.hf.serving import PAD_VALUES, reset_kv_caches, serving_inputs

    model = build_hf_llama(cfg, device)

    def inputs(n: int, seed: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (), serving_inputs(model, n, seed=seed)

    tokens = {"input_ids": {0: "tokens"}, "position_ids": {0: "tokens"}}
    return WarmSubject(
        model, inputs, tokens, dict(PAD_VALUES), lambda: reset_kv_caches(model)
    )
