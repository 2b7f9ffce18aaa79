"""A transformers Llama: eager, ``torch.compile`` default, and Stitch, side by side.

Run: ``python bench/hf_llama.py [--layers 8] [--hidden 256] [--iters 50] [--rounds 5]``
or ``python bench/hf_llama.py --decode [--steps 33] [--rounds 7]``
(needs ``pip install -e '.[hf]'``).

The model is ``LlamaForCausalLM`` built from a config (random weights, no
download): 8 layers, hidden size 256, 8 heads over 4 key/value heads.  One
forward over ``batch`` sequences of ``seq`` tokens (``use_cache=False``) is
timed for each shape in three variants:

``eager``          the model as it is;
``torch.compile``  ``torch.compile(model)``: Inductor on the whole graph
                   (``dynamic=None``: the second shape recompiles, batch dynamic);
``torch.compile dynamic``  ``torch.compile(model, dynamic=True)``: Stitch's own
                   setting (batch and sequence symbolic), the like-for-like
                   comparison;
``stitch``         ``torch.compile(model, backend=StitchBackend(), dynamic=True)``:
                   split at SDPA (a default splitting op), Inductor pieces, the
                   attention run eagerly between them by the emitted function.

Compiles happen in a warm-up before any timing; the first-call time is printed
apart.  The variants are timed in turns (``--rounds`` rounds of ``--iters``
forwards each, the median per round, then the median of rounds), so a busy
machine slows them alike; ratios are to eager and to ``torch.compile``.
Every output is checked against eager first.

Decode steps (``--decode``, the serving loop's steady state): per batch size
(1 and 8), each variant prefills the same 16-token prompt into a fresh static KV
cache, then runs ``--steps`` greedy decode steps, each timed alone; a round is
one such decode per variant, in turns, and the table gives the median step over
``--rounds`` rounds.  Here ``torch.compile`` is ``dynamic=True`` too (as for
Stitch: one graph for the prefill, one for every step), and every variant's
tokens must equal eager's.  A fourth variant, ``stitch aot``, is the
guard-free saved forward: ``stitch.runtime.aot_compile(model,
example_kwargs={"input_ids", "past_key_values"})`` on its first call, then no
Dynamo per step, only Stitch's input check (the prefill and the decode step
are two signatures, each compiled on its first call).  The first prefill and
step of each variant are timed apart (the compiles).  ``--inside`` also
times each compiled variant's backend function alone (``torch.compile`` then
names ``compile_fx``, what its default backend calls): the rest of a step is
Dynamo's (guards, frame, rebuilding the outputs).  ``stitch profile --hf llama
--decode`` shows where Stitch's step time goes, piece by piece.

``--threads 1`` on a machine
other jobs keep busy: with two OpenMP threads on two busy cores, eager PyTorch
ran 10-30x slower than with one in our runs (threads spinning at barriers).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

SHAPES = ((1, 16), (8, 16))
VARIANTS = ("eager", "torch.compile", "torch.compile dynamic", "stitch")


def build(layers: int, hidden: int, vocab: int = 512) -> torch.nn.Module:
    from stitch.runtime.hf import build_model

    return build_model(
        "llama",
        layers=layers,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_attention_heads=8,
        num_key_value_heads=4,
    )


def inputs(batch: int, seq: int) -> dict[str, Any]:
    from stitch.runtime.hf import example_inputs

    return example_inputs("llama", batch, seq, seed=batch * 1000 + seq)


def variants(
    model: torch.nn.Module,
    cache_dir: str,
    dynamic: bool | None = None,
    inside: dict[str, Inside] | None = None,
) -> dict[str, Callable[..., Any]]:
    """eager, ``torch.compile`` (with ``dynamic``) and Stitch (always dynamic).

    With ``inside``, each compiled variant's backend function is timed apart
    (``torch.compile`` then names Inductor's ``compile_fx``, what its default
    backend calls)."""
    from stitch.runtime import CompilationConfig, StitchBackend

    stitch: Any = StitchBackend(CompilationConfig(cache_dir=cache_dir))
    inductor: Any = "inductor"
    if inside is not None:
        from torch._inductor.compile_fx import compile_fx

        inductor = inside["torch.compile"].wrap(compile_fx)
        stitch = inside["stitch"].wrap(stitch)
    return {
        "eager": model,
        "torch.compile": torch.compile(model, backend=inductor, dynamic=dynamic),
        "stitch": torch.compile(model, backend=stitch, dynamic=True),
    }


class Inside:
    """Time spent in a backend's compiled function; the rest of a compiled
    call is Dynamo's (guards, frame, rebuilding the outputs)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, backend: Callable[..., Any]) -> Callable[..., Any]:
        def compile_graph(gm: Any, example_inputs: Any) -> Callable[..., Any]:
            fn = backend(gm, example_inputs)

            def timed(*args: Any) -> Any:
                start = time.perf_counter()
                try:
                    return fn(*args)
                finally:
                    self.seconds += time.perf_counter() - start

            return timed

        return compile_graph


class SavedForward:
    """``stitch aot``: ``aot_compile`` with the first call's keyword arguments as the
    example, then the saved forward (guard-free: Stitch's input check only)."""

    def __init__(self, model: torch.nn.Module, cache_dir: str) -> None:
        from stitch.runtime import CompilationConfig

        self.model = model
        self.config = CompilationConfig(cache_dir=cache_dir)
        self.compiled: Callable[..., Any] | None = None

    def __call__(self, **kwargs: Any) -> Any:
        if self.compiled is None:
            from stitch.runtime import aot_compile

            self.compiled = aot_compile(
                self.model, (), self.config, example_kwargs=kwargs
            )
        return self.compiled(**kwargs)


def time_ms(
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    iters: int,
    clock: Callable[[], float],
) -> float:
    times = []
    for _ in range(iters):
        start = clock()
        fn(**kwargs)
        times.append((clock() - start) * 1e3)
    return statistics.median(times)


def run(args: argparse.Namespace) -> str:
    clock = time.thread_time if args.clock == "thread_time" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(args.layers, args.hidden, args.vocab)
    cache_dir = tempfile.mkdtemp(prefix="stitch-bench-")
    fns = variants(model, cache_dir)
    fns["torch.compile dynamic"] = torch.compile(model, dynamic=True)
    fns = {name: fns[name] for name in VARIANTS}
    first_call: dict[tuple[str, tuple[int, int]], float] = {}
    errors: dict[tuple[str, tuple[int, int]], float] = {}
    results: dict[tuple[str, tuple[int, int]], list[float]] = {}
    with torch.no_grad():
        for shape in SHAPES:
            kwargs = inputs(*shape)
            ref = model(**kwargs).logits
            for name, fn in fns.items():
                start = time.perf_counter()
                out = fn(**kwargs).logits
                first_call[name, shape] = time.perf_counter() - start
                errors[name, shape] = (out - ref).abs().max().item()
                for _ in range(3):
                    fn(**kwargs)
        for _ in range(args.rounds):
            for shape in SHAPES:
                kwargs = inputs(*shape)
                for name, fn in fns.items():
                    results.setdefault((name, shape), []).append(
                        time_ms(fn, kwargs, args.iters, clock)
                    )

    title = (
        f"transformers LlamaForCausalLM: {args.layers} layers, hidden {args.hidden}, "
        f"vocabulary {args.vocab}, "
        f"8 heads / 4 kv heads, float32, CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()} ({os.cpu_count()} CPUs); "
        f"median of {args.rounds} rounds x {args.iters} forwards, clock {args.clock}"
    )
    ms = {key: statistics.median(times) for key, times in results.items()}
    return "\n\n".join([title, *forward_tables(ms, errors, first_call)])


def forward_tables(
    ms: dict[tuple[str, tuple[int, int]], float],
    errors: dict[tuple[str, tuple[int, int]], float],
    first_call: dict[tuple[str, tuple[int, int]], float],
) -> list[str]:
    """The forward table (median ms, ratios, errors) and the first-call table,
    each keyed by (variant, shape)."""
    from stitch.runtime.tables import markdown_table

    def row(shape: tuple[int, int]) -> tuple[str, ...]:
        t = {name: ms[name, shape] for name in VARIANTS}
        err = f"{errors['torch.compile', shape]:.1e}, {errors['stitch', shape]:.1e}"
        return (
            f"{shape[0]} x {shape[1]}",
            *(f"{t[name]:.3f}" for name in VARIANTS),
            *(f"{t['stitch'] / t[name]:.2f}" for name in VARIANTS[:3]),
            err,
        )

    headers = ["batch x seq", *(f"{name} ms" for name in VARIANTS)]
    headers += [*(f"stitch / {name}" for name in VARIANTS[:3])]
    headers += ["max abs err (compile, stitch)"]
    first = [
        (f"{s[0]} x {s[1]}", *(f"{first_call[name, s]:.2f}" for name in VARIANTS))
        for s in SHAPES
    ]
    return [
        markdown_table(headers, map(row, SHAPES), align="lrrrrrrrl"),
        "first call (compile included), seconds:",
        markdown_table(("batch x seq", *VARIANTS), first, align="lrrrr"),
    ]


DECODE_BATCHES = (1, 8)
PROMPT = 16


def decode_round(
    fn: Callable[..., Any],
    model: torch.nn.Module,
    prompt: torch.Tensor,
    steps: int,
    clock: Callable[[], float],
    inside: Inside | None = None,
) -> tuple[list[float], float, torch.Tensor, list[float]]:
    """Step times (ms), the prefill time (s), the tokens of one greedy decode,
    and each step's time in the backend's function (ms; with ``inside``)."""
    from stitch.runtime.harness.hf_decode import static_cache

    cache = static_cache(model, prompt.shape[0], PROMPT + steps)
    start = time.perf_counter()
    logits = fn(input_ids=prompt, past_key_values=cache).logits
    prefill_s = time.perf_counter() - start
    ids = logits[:, -1].argmax(-1, keepdim=True)
    tokens, times, within = [ids], [], []
    for _ in range(steps - 1):
        if inside is not None:
            inside.seconds = 0.0
        start = clock()
        logits = fn(input_ids=ids, past_key_values=cache).logits
        ids = logits[:, -1].argmax(-1, keepdim=True)
        times.append((clock() - start) * 1e3)
        if inside is not None:
            within.append(inside.seconds * 1e3)
        tokens.append(ids)
    return times, prefill_s, torch.cat(tokens, dim=1), within


def run_decode(args: argparse.Namespace) -> str:
    clock = time.thread_time if args.clock == "thread_time" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(args.layers, args.hidden, args.vocab)
    cache_dir = tempfile.mkdtemp(prefix="stitch-bench-")
    inside = {n: Inside() for n in ("torch.compile", "stitch")} if args.inside else None
    fns = variants(model, cache_dir, dynamic=True, inside=inside)
    fns["stitch aot"] = SavedForward(model, cache_dir)
    within: dict[tuple[str, int], list[float]] = {}
    vocab = model.config.vocab_size
    first: dict[tuple[str, int], tuple[float, float]] = {}
    steps: dict[tuple[str, int], list[float]] = {}
    mismatched: list[str] = []
    with torch.no_grad():
        for batch in DECODE_BATCHES:
            prompt = torch.randint(3, vocab, (batch, PROMPT))
            for name, fn in fns.items():
                # As many steps as the timed rounds: the same cache length.
                times, prefill_s, _, _ = decode_round(
                    fn, model, prompt, args.steps, clock
                )
                first[name, batch] = (prefill_s, times[0] / 1e3)
        for r in range(args.rounds):
            for batch in DECODE_BATCHES:
                prompt = torch.randint(3, vocab, (batch, PROMPT))
                reference = None
                for name, fn in fns.items():
                    times, _, tokens, inner = decode_round(
                        fn,
                        model,
                        prompt,
                        args.steps,
                        clock,
                        inside.get(name) if inside else None,
                    )
                    steps.setdefault((name, batch), []).append(statistics.median(times))
                    if inner:
                        within.setdefault((name, batch), []).append(
                            statistics.median(inner)
                        )
                    if reference is None:
                        reference = tokens
                    elif not torch.equal(tokens, reference):
                        mismatched.append(f"{name} batch {batch} round {r}")
    title = (
        f"decode steps: transformers LlamaForCausalLM, {args.layers} layers, hidden "
        f"{args.hidden}, vocabulary {args.vocab}, float32, CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; static KV cache, prompt {PROMPT}, "
        f"median step of {args.steps - 1} per round, median of {args.rounds} rounds, "
        f"clock {args.clock}"
    )
    step_ms = {key: statistics.median(times) for key, times in steps.items()}
    inside_ms = {key: statistics.median(times) for key, times in within.items()}
    tables = decode_tables(list(fns), step_ms, first, inside_ms, mismatched)
    return "\n\n".join([title, *tables])


def decode_tables(
    names: Sequence[str],
    step_ms: dict[tuple[str, int], float],
    first: dict[tuple[str, int], tuple[float, float]],
    inside_ms: dict[tuple[str, int], float],
    mismatched: Sequence[str],
) -> list[str]:
    """The decode step table, the first prefill and step, and (with
    ``inside_ms``) each step inside and outside the backend's function; keyed
    by (variant, batch)."""
    from stitch.runtime.tables import markdown_table

    timed = ("eager", "torch.compile", "stitch", "stitch aot")
    rows = []
    for batch in DECODE_BATCHES:
        ms = {n: step_ms[n, batch] for n in timed}
        equal = "yes" if not any(f"batch {batch} " in m for m in mismatched) else "NO"
        ratios = (f"{ms[n] / ms['torch.compile']:.3f}x" for n in timed[2:])
        rows.append((batch, *(f"{ms[n]:.3f}" for n in timed), *ratios, equal))
    headers = ["batch", "eager ms", "torch.compile ms", "stitch ms"]
    headers += ["stitch aot (guard-free) ms", "stitch / torch.compile"]
    headers += ["stitch aot / torch.compile", "tokens equal"]
    firsts = [
        (batch, *(f"{first[n, batch][0]:.2f}, {first[n, batch][1]:.2f}" for n in names))
        for batch in DECODE_BATCHES
    ]
    first_headers = ("batch", *(f"{n} prefill, step" for n in names))
    tables = [
        markdown_table(headers, rows, align="rrrrrrrl"),
        "first prefill and first step (compiles included), seconds:",
        markdown_table(first_headers, firsts, align="r" * len(first_headers)),
    ]
    if inside_ms:
        split = []
        for (name, batch), ms in sorted(inside_ms.items(), key=lambda x: x[0][::-1]):
            step = step_ms[name, batch]
            split.append((batch, name, *(f"{t:.3f}" for t in (step, ms, step - ms))))
        tables += [
            "inside the backend's function and outside it (Dynamo), ms per step:",
            markdown_table(
                ("batch", "variant", "step", "inside", "outside"), split, align="rlrrr"
            ),
        ]
    if mismatched:
        tables.append("tokens differ from eager: " + ", ".join(mismatched))
    return tables


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument(
        "--vocab",
        type=int,
        default=512,
        help="vocabulary size (default 512; issue 20's model has 32000)",
    )
    parser.add_argument(
        "--iters", type=int, default=50, help="forwards per round (default 50)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds per variant (default 5)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (default: torch's choice); on a machine other "
        "jobs keep busy, 1 avoids OpenMP threads spinning against them",
    )
    parser.add_argument(
        "--decode",
        action="store_true",
        help="time greedy decode steps with a static KV cache instead of forwards",
    )
    parser.add_argument(
        "--steps", type=int, default=33, help="--decode: tokens per round (default 33)"
    )
    parser.add_argument(
        "--inside",
        action="store_true",
        help="--decode: also time each compiled variant's backend function apart "
        "from Dynamo's work around it",
    )
    parser.add_argument(
        "--clock",
        choices=("perf_counter", "thread_time"),
        default="perf_counter",
        help="wall time, or CPU time of this thread (with --threads 1 only: other "
        "threads' time is not counted)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(run_decode(args) if args.decode else run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
