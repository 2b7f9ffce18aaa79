"""Calls a saved forward with the inputs of issue 19's table, in a fresh process.

Usage: ``python tests/input_check_worker.py '<json spec>'`` (spec: ``cache_dir``,
``rows``).  It ``aot_compile``s the example llama (one layer) from int64 ids and
positions of 8 tokens, then calls it once per row, printing ``ROW <json>`` after
each (flushed, so a process that dies on a row still says which rows passed)
and ``WORKER <json>`` at the end: whether the forward loaded warm and the
modules of ``WATCHED`` the process imported.  Each row's report: ``ok`` with the
largest difference from eager, or the error's type and message, and the
compile counter's deltas during the call.
"""

from __future__ import annotations

import json
import logging
import sys

WATCHED = ("torch._dynamo", "torch._inductor", "black", "jinja2")


# Rows whose call is not the forward's (ids, positions): positional arguments
# beyond the row's own, and keywords.
CALLS = {"one_argument": (1, {}), "unknown_keyword": (2, {"scale": 2.0})}


def row_inputs(name: str, cfg: object) -> tuple[object, object]:
    import torch

    from stitch.runtime.examples import llama_inputs

    ids, pos = llama_inputs(cfg, 8)
    short_ids, short_pos = llama_inputs(cfg, 5, seed=1)
    with torch.inference_mode():
        inference = (ids.clone(), pos.clone())
    rows = {
        "inference_tensors": inference,
        "out_of_range_different_lengths": (ids + cfg.vocab_size, short_pos),
        "int64": (ids, pos),
        "one_argument": (ids, pos),
        "unknown_keyword": (ids, pos),
        "int32_ids": (ids.to(torch.int32), pos),
        "int32_ids_again": (short_ids.to(torch.int32), short_pos),
        "float_ids": (ids.float(), pos),
        "noncontiguous_ids": (torch.stack([ids, ids], 1)[:, 0], pos),
        "2d_ids": (ids[None], pos),
        "different_lengths": (ids, short_pos),
        "zero_tokens_int32_positions": (ids[:0], pos[:0].to(torch.int32)),
        "ids_out_of_range": (ids + cfg.vocab_size, pos),
        "negative_ids": (ids - cfg.vocab_size, pos),
        "int32_ids_out_of_range": ((ids + cfg.vocab_size).to(torch.int32), pos),
    }
    return rows[name]


def main(spec: dict) -> dict:
    import torch

    from stitch.runtime import CompilationConfig, aot_compile, compilation_counter
    from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs

    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("stitch").addHandler(handler)
    cfg = LlamaConfig(num_layers=1)
    model = build_llama(cfg)
    config = CompilationConfig(cache_dir=spec["cache_dir"])
    with torch.no_grad():
        compiled = aot_compile(
            model, llama_inputs(cfg, 8), config, dynamic_dims={0: [0], 1: [0]}
        )
        imported_before = sorted(m for m in WATCHED if m in sys.modules)
        for name in spec["rows"]:
            ids, pos = row_inputs(name, cfg)
            before = compilation_counter.snapshot()
            report: dict = {"row": name}
            try:
                model.reset_kv_caches()
                count, keywords = CALLS.get(name, (2, {}))
                out = compiled(*(ids, pos)[:count], **keywords)
            except Exception as exc:  # noqa: BLE001 - reported to the test
                report["error"] = type(exc).__name__
                report["message"] = str(exc)
                report["stitch_error"] = type(exc).__module__.startswith("stitch")
            else:
                model.reset_kv_caches()
                expected = model(ids, pos)
                report["shape"] = list(out.shape)
                report["diff"] = (
                    (out - expected).abs().max().item() if out.numel() else 0.0
                )
            after = compilation_counter.snapshot()
            report["counter"] = {
                k: after[k] - before[k] for k in after if after[k] != before[k]
            }
            print("ROW " + json.dumps(report, sort_keys=True), flush=True)
    return {
        "warm": compiled.warm,
        "imported_at_load": imported_before,
        "imported": sorted(m for m in WATCHED if m in sys.modules),
        "path": compiled.path,
        "warnings": messages,
    }


if __name__ == "__main__":
    report = main(json.loads(sys.argv[1]))
    print("WORKER " + json.dumps(report, sort_keys=True))
