"""Helpers shared by the AOT tests: a model in a file of its own, and the worker process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import backend_support

WORKER = Path(__file__).with_name("aot_worker.py")
MODEL_SOURCE = '''\
"""A model in a file of its own, so that a test can edit the code Dynamo traces."""
import torch

from stitch.runtime.examples import LlamaConfig, build_llama

CFG = LlamaConfig(num_layers=1)


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = build_llama(CFG)

    def forward(self, input_ids, positions):
        return self.inner(input_ids, positions)  # version 1

    def reset_kv_caches(self) -> None:
        self.inner.reset_kv_caches()


def build() -> Model:
    return Model()
'''
SIZES = [8, 1, 3]
# One layer: two compiled pieces (embedding + layer up to attention; the rest),
# one target each (no compile sizes or ranges).
PIECES = 2


def run_worker(
    spec: dict[str, Any], inductor_dir: Path | None = None
) -> dict[str, Any]:
    """The worker's report; ``inductor_dir``: an Inductor cache of its own (else
    the test run's, which other tests' compiles of the same pieces warm)."""
    env = {} if inductor_dir is None else {"TORCHINDUCTOR_CACHE_DIR": str(inductor_dir)}
    return backend_support.run_worker(spec, 300, env, worker=WORKER)
