"""``stitch profile``: where a forward's time goes, piece by piece.

Compiles a built-in example or a tiny transformers model with a
:class:`~stitch.runtime.profiling.Profiler` on the backend, so every graph runs
the profiling variant of its stitching source (see NOTE: [what a profile
counts] in ``profiling.py``), warms each size up, then times ``--iters``
forwards per size and prints one table per size.  ``--html`` writes a bar chart
(a self-contained page), ``--trace`` a torch.profiler (Chrome) trace of one
forward per size whose ranges carry the piece names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import torch

from ..compat.dynamo import mark_unbacked
from ..config import CompilationConfig
from ..pipeline.api import StitchBackend
from ..profiling import Profiler

WARMUP = 3


def run_profile(
    *,
    example: str | None,
    hf: str | None,
    sizes: Sequence[int],
    iters: int,
    layers: int | None,
    backend: str,
    batch: int,
    attn: str,
    cache_dir: str,
    html_path: str,
    trace_path: str,
    out: TextIO,
    decode: bool = False,
) -> int:
    profiler = Profiler()
    llama = None
    if not hf:
        assert example is not None
        llama = _example_config(example, sizes, layers)
    # Profiling times compiled pieces: no tiered start.
    config = CompilationConfig(
        backend=backend,
        cache_dir=cache_dir,
        tiered_start=False,
        # An example's batches hold at most its max_seqs tokens.
        **({} if llama is None else {"max_num_batched_tokens": llama.max_seqs}),
    )
    stitch = StitchBackend(config, profiler=profiler)
    if hf and decode:
        title, forwards = _hf_decode_forwards(hf, sizes, layers, attn, stitch, iters)
    elif hf:
        title, forwards = _hf_forwards(hf, sizes, layers, batch, attn, stitch)
    else:
        assert example is not None and llama is not None
        title, forwards = _example_forwards(example, llama, sizes, stitch)
    with torch.no_grad():
        for size, forward in forwards:
            profiler.size = size
            for _ in range(WARMUP):
                forward()
        profiler.reset()
        for size, forward in forwards:
            profiler.size = size
            for _ in range(iters):
                profiler.call(forward)
    profile = profiler.profile()
    graphs = len(stitch.compiled)
    print(
        f"{title}: backend {backend}, {graphs} graph(s), {iters} forwards per size "
        f"after {WARMUP} warm-up",
        file=out,
    )
    print("", file=out)
    print(profile.table(), file=out)
    if html_path:
        with open(html_path, "w", encoding="utf-8") as f:
            f.write(profile.html(title))
        print(f"bar chart: {html_path}", file=out)
    if trace_path:
        _trace(forwards, trace_path)
        print(f"torch.profiler trace: {trace_path}", file=out)
    return 0


def _trace(forwards: Sequence[tuple[int, Callable[[], Any]]], path: str) -> None:
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        activities.append(ProfilerActivity.CUDA)
    with torch.no_grad(), profile(activities=activities) as prof:
        for size, forward in forwards:
            with record_function(f"forward size {size}"):
                forward()
    prof.export_chrome_trace(os.fspath(path))


def _example_config(name: str, sizes: Sequence[int], layers: int | None) -> Any:
    """The example's LlamaConfig, once ``name`` and ``sizes`` are checked."""
    from ..examples import LlamaConfig
    from ..examples.models import runnable_examples

    runnable = runnable_examples()
    if name not in runnable:
        raise SystemExit(
            f"stitch profile: unknown example {name!r} "
            f"(runnable: {', '.join(sorted(runnable))})"
        )
    cfg = LlamaConfig(num_layers=layers or runnable[name])
    for n in sizes:
        if not 1 <= n <= cfg.max_seqs:
            raise SystemExit(f"stitch profile: size {n} must be in [1, {cfg.max_seqs}]")
    return cfg


def _example_forwards(
    name: str, cfg: Any, sizes: Sequence[int], stitch: StitchBackend
) -> tuple[str, list[tuple[int, Callable[[], Any]]]]:
    from ..examples import build_llama, llama_inputs

    model = build_llama(cfg)
    compiled = torch.compile(model, backend=stitch, fullgraph=True)
    forwards = []
    for n in sizes:
        input_ids, positions = llama_inputs(cfg, n, seed=n)
        # One graph for every token count (see the README).
        for t in (input_ids, positions):
            mark_unbacked(t, 0)

        def forward(ids: Any = input_ids, pos: Any = positions) -> Any:
            return compiled(ids, pos)

        forwards.append((n, forward))
    title = f"stitch profile --example {name} ({cfg.num_layers} layers)"
    return title, forwards


def _hf_forwards(
    family: str,
    sizes: Sequence[int],
    layers: int | None,
    batch: int,
    attn: str,
    stitch: StitchBackend,
) -> tuple[str, list[tuple[int, Callable[[], Any]]]]:
    from stitch.runtime.hf import build_model, example_inputs

    model = build_model(
        family,
        layers=layers or 2,
        attn_implementation=None if attn == "default" else attn,
    )
    compiled = torch.compile(model, backend=stitch, dynamic=True)
    forwards = []
    for n in sizes:
        kwargs = example_inputs(family, batch, n, seed=n)

        def forward(kw: dict[str, Any] = kwargs) -> Any:
            return compiled(**kw)

        forwards.append((n, forward))
    title = (
        f"stitch profile --hf {family} ({type(model).__name__}, batch {batch}, "
        f"attn {attn})"
    )
    return title, forwards


PROMPT = 16


def _hf_decode_forwards(
    family: str,
    batches: Sequence[int],
    layers: int | None,
    attn: str,
    stitch: StitchBackend,
    iters: int,
) -> tuple[str, list[tuple[str, Callable[[], Any]]]]:
    """One decode step per forward, with a static KV cache per batch size.

    Each batch size prefills a prompt of PROMPT tokens once (not profiled), then
    every forward is one greedy decode step that appends to that cache: the
    serving loop's steady state (see NOTE: [one graph for the prefill, one for
    every decode step] in harness/hf_decode.py).
    """
    from stitch.runtime.harness.hf_decode import static_cache
    from stitch.runtime.hf import build_model

    model = build_model(
        family,
        layers=layers or 2,
        attn_implementation=None if attn == "default" else attn,
    )
    if not getattr(model, "can_generate", lambda: False)():
        raise SystemExit(f"stitch profile: --decode needs a causal LM; {family} is not")
    compiled = torch.compile(model, backend=stitch, dynamic=True)
    generator = torch.Generator().manual_seed(0)
    forwards = []
    for b in batches:
        prompt = torch.randint(
            3, model.config.vocab_size, (b, PROMPT), generator=generator
        )
        cache = static_cache(model, b, PROMPT + WARMUP + iters + 1)
        with torch.no_grad():
            logits = compiled(input_ids=prompt, past_key_values=cache).logits
        state = {"ids": logits[:, -1].argmax(-1, keepdim=True)}

        def step(state: dict[str, Any] = state, cache: Any = cache) -> Any:
            out = compiled(input_ids=state["ids"], past_key_values=cache)
            state["ids"] = out.logits[:, -1].argmax(-1, keepdim=True)
            return out

        forwards.append((f"decode batch {b}", step))
    title = (
        f"stitch profile --hf {family} --decode ({type(model).__name__}, prompt "
        f"{PROMPT} tokens, attn {attn})"
    )
    return title, forwards
