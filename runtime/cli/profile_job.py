"""``stitch profile``: where a forward's time goes, piece by piece.

Compiles the chosen model (NOTE: [one resolution of the model choice] in
``model_choice.py``) with a
:class:`~stitch.runtime.profiling.Profiler` on the backend, so every graph runs
the profiling variant of its stitching source (see NOTE: [what a profile
counts] in ``profiling.py``), warms each size up, then times ``--iters``
forwards per size and prints one table per size.  ``--html`` writes a bar chart
(a self-contained page), ``--trace`` a torch.profiler (Chrome) trace of one
forward per size whose ranges carry the piece names.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import torch

from ..pipeline.api import StitchBackend
from ..profiling import Profiler
from .model_choice import ModelChoice

WARMUP = 3


def run_profile(
    choice: ModelChoice,
    *,
    sizes: Sequence[int],
    iters: int,
    backend: str,
    cache_dir: str,
    html_path: str,
    trace_path: str,
    out: TextIO,
    decode: bool = False,
    source: str = "",
) -> int:
    profiler = Profiler()
    # Profiling times compiled pieces: no tiered start.
    config = choice.config(
        backend=backend,
        cache_dir=cache_dir,
        tiered_start=False,
        stitching_source=source,
    )
    stitch = StitchBackend(config, profiler=profiler)
    compiled = choice.compile(stitch)
    if decode:
        title, forwards = _decode_forwards(choice, compiled, sizes, iters)
    else:
        title = f"stitch profile {choice.flag} ({choice.description})"
        forwards = _forwards(choice, compiled, profiler)
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
    if source:
        # NOTE: [a profile of an edited stitching file] (pipeline/materialize.py)
        print(
            f"edited stitching source {source}: each compiled piece timed around "
            "its call; the splitting ops count as stitching",
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


def _forwards(
    choice: ModelChoice, compiled: Callable[..., Any], profiler: Profiler
) -> list[tuple[Any, Callable[[], Any]]]:
    """One forward per call of ``choice``, each compiled (and checked for a
    model Dynamo cannot trace) by a first call here."""
    forwards = []
    with torch.no_grad():
        for call in choice.calls:
            profiler.size = call.size
            choice.compiled(compiled, call)
            forwards.append(
                (call.size, functools.partial(compiled, *call.args, **call.kwargs))
            )
    return forwards


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


PROMPT = 16


def _decode_forwards(
    choice: ModelChoice,
    compiled: Callable[..., Any],
    batches: Sequence[int],
    iters: int,
) -> tuple[str, list[tuple[str, Callable[[], Any]]]]:
    """One decode step per forward, with a static KV cache per batch size.

    Each batch size prefills a prompt of PROMPT tokens once (not profiled), then
    every forward is one greedy decode step that appends to that cache: the
    serving loop's steady state (see NOTE: [one graph for the prefill, one for
    every decode step] in harness/hf_decode.py).
    """
    from stitch.runtime.harness.hf_decode import static_cache

    model = choice.model
    if not getattr(model, "can_generate", lambda: False)():
        raise SystemExit(
            f"stitch profile: --decode needs a causal LM; {choice.flag} is not"
        )
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    forwards = []
    for b in batches:
        prompt = torch.randint(
            3, model.config.vocab_size, (b, PROMPT), generator=generator
        ).to(device)
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
        f"stitch profile {choice.flag} --decode ({choice.description}, prompt "
        f"{PROMPT} tokens)"
    )
    return title, forwards
