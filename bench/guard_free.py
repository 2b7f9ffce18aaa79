"""Host time per forward: the Dynamo-entered call versus the guard-free AOT forward.

Run: ``python bench/guard_free.py [--layers 32] [--tokens 1] [--iters 200]``.

One process compiles the llama-like model once with Stitch (hidden 64, so the
pieces do little work and the host overhead shows) and calls the same compiled
pieces three ways, interleaved round by round:

``dynamo``        ``torch.compile(model, backend=StitchBackend(...))``: each call
                  enters Dynamo's frame, evaluates its guards, runs the transformed
                  bytecode and then the stitched function (today's path).
``aot, guards``   ``aot_compile(..., guards=True)``: torch's loaded function,
                  checking Dynamo's guards in Python on every call (the debug switch).
``aot``           ``aot_compile(...)``: the same bytecode as a plain function bound
                  to the model; no Dynamo frame, no guards, behind Stitch's input
                  check (the serving path).
``aot, no check`` the same forward without the input check (what it cost before
                  issue 19).
``eager``         the model itself, for scale.

Three tables: the whole forward, and the call path alone, where the stitched
function each variant reaches is swapped for one that returns its recorded
result at once (what is left is Dynamo's frame and guards, the bytecode that
gathers the parameters, and the Python calls around them).

All run on one thread (``torch.set_num_threads(1)``, set before compiling), so
the numbers are the calling thread's work; ``--clock thread_time`` counts only
this thread's CPU time (useful on a busy machine).  Prints microseconds per
forward (median over rounds) and the difference to the guard-free forward.
The third table is the call path alone of a model with 8 tensor arguments
(``--args``): no check, Stitch's input check, Dynamo's guards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from warm_start import machine  # noqa: E402


class Switch:
    """Stands in for a stitched function: runs it, or returns its recorded result."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.recorded: Any = None
        self.stub = False

    def __call__(self, *args: Any) -> Any:
        if self.stub:
            return self.recorded
        self.recorded = self.real(*args)
        return self.recorded


def switch_compiled_fn(f_globals: dict[str, Any]) -> Switch:
    """Put a :class:`Switch` in front of the compiled function a Dynamo bytecode calls."""
    (name,) = [k for k in f_globals if k.startswith("__compiled_fn")]
    switch = Switch(f_globals[name])
    f_globals[name] = switch
    return switch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=1, help="batch size")
    parser.add_argument("--iters", type=int, default=200, help="calls per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--args", type=int, default=8, help="tensor arguments of the third table"
    )
    parser.add_argument(
        "--clock", choices=("perf_counter", "thread_time"), default="perf_counter"
    )
    args = parser.parse_args()

    import torch

    from stitch.runtime import CompilationConfig, StitchBackend, aot_compile
    from stitch.runtime.examples import LlamaConfig, build_llama, llama_inputs

    torch.set_num_threads(1)
    cfg = LlamaConfig(num_layers=args.layers)
    model = build_llama(cfg)
    cache = tempfile.mkdtemp(prefix="stitch-guard-free-")
    config = CompilationConfig(cache_dir=cache)
    ids, pos = llama_inputs(cfg, args.tokens)
    dims = {0: [0], 1: [0]}
    switches: list[Switch] = []

    class SwitchingBackend(StitchBackend):
        def __call__(self, gm: Any, example_inputs: Any) -> Any:
            switches.append(Switch(super().__call__(gm, example_inputs)))
            return switches[-1]

    with torch.no_grad():
        aot = aot_compile(model, (ids, pos), config, dynamic_dims=dims)
        guarded = aot_compile(model, (ids, pos), config, dynamic_dims=dims, guards=True)
        dynamo = torch.compile(model, backend=SwitchingBackend(config), fullgraph=True)
        marked = llama_inputs(cfg, args.tokens)
        for t in marked:
            torch._dynamo.decorators.mark_unbacked(t, 0)
        dynamo(*marked)
    switches.append(switch_compiled_fn(unchecked(aot).__globals__))
    switches.append(switch_compiled_fn(guarded.forward.__func__.fn.__globals__))
    variants: dict[str, Callable[..., Any]] = {
        "dynamo": dynamo,
        "aot, guards": guarded,
        "aot": aot,
        "aot, no check": types.MethodType(unchecked(aot), model),
        "eager": model,
    }
    with torch.no_grad():
        for fn in variants.values():  # warm-up, and a numerics check
            model.reset_kv_caches()
            out = fn(ids, pos)
            model.reset_kv_caches()
            ref = model(ids, pos)
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        whole = time_variants(variants, (ids, pos), args)
        for switch in switches:
            switch.stub = True
        del variants["eager"]
        path = time_variants(variants, (ids, pos), args)
        many = many_arguments(args, cache)

    print(
        f"\n{args.layers}-layer llama-like model, hidden {cfg.hidden_size}, batch "
        f"{args.tokens}, one thread; {args.clock}, median of {args.rounds} rounds of "
        f"{args.iters} calls"
    )
    print_table("whole forward", whole)
    print_table("call path alone (stitched function returns at once)", path)
    print_table(
        f"call path alone, {args.args} tensor arguments (stitched function returns "
        "at once)",
        many,
    )
    print(f"\nmachine: {machine()}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end (1, 5, 15 min): {load}")


def unchecked(compiled: Any) -> Any:
    """The saved forward behind the input check (signature 0's), unbound."""
    return compiled.forward.__func__.__kwdefaults__["__stitch_forwards__"][0]


class ManyInputs(torch.nn.Module):
    """Token ids, positions and hidden states in: one dynamic token count.
    (At module level: torch's aot_compile saves no class defined in a function.)"""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(128, 64)

    def forward(self, input_ids: Any, positions: Any, *hidden: Any) -> Any:
        x = self.embed(input_ids) + positions[:, None]
        for h in hidden:
            x = x + h
        return x


def many_arguments(args: argparse.Namespace, cache: str) -> dict[str, float]:
    """Call path alone of a forward taking ``args.args`` tensors (ids, positions,
    hidden states: one dynamic token count), three ways."""
    import torch

    from stitch.runtime import CompilationConfig, aot_compile

    n = args.tokens
    inputs = (
        torch.randint(0, 128, (n,)),
        torch.arange(n),
        *(torch.randn(n, 64) for _ in range(args.args - 2)),
    )
    model = ManyInputs()
    config = CompilationConfig(cache_dir=cache)
    dims = {i: [0] for i in range(len(inputs))}
    with torch.no_grad():
        checked = aot_compile(model, inputs, config, dynamic_dims=dims)
        guarded = aot_compile(model, inputs, config, dynamic_dims=dims, guards=True)
    switches = [
        switch_compiled_fn(unchecked(checked).__globals__),
        switch_compiled_fn(guarded.forward.__func__.fn.__globals__),
    ]
    variants: dict[str, Callable[..., Any]] = {
        "aot, guards": guarded,
        "aot": checked,
        "aot, no check": types.MethodType(unchecked(checked), model),
    }
    # The parts of the check, each alone: the C++ guard of the token count (with
    # reading the count), and the token-id bounds.
    namespace = checked.forward.__func__.__globals__
    guard = namespace["SIGNATURE_0"]
    in_range = namespace["__stitch_in_range__"]
    ids = inputs[0]
    parts: dict[str, Callable[..., Any]] = {
        "  part: SIGNATURE_0[n0].check": lambda *a: guard[a[0].shape[0]].check(*a),
        # NOTE: [one token id] (codegen/input_check.py)
        "  part: the ids' bounds": lambda *a: (
            0 <= ids.item() < 128 if ids.shape[0] == 1 else in_range(ids, 128)
        ),
    }
    with torch.no_grad():
        for fn in variants.values():
            fn(*inputs)
        for switch in switches:
            switch.stub = True
        return time_variants({**variants, **parts}, inputs, args)


def time_variants(
    variants: dict[str, Callable[..., Any]], inputs: Any, args: argparse.Namespace
) -> dict[str, float]:
    clock = getattr(time, args.clock)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = clock()
            for _ in range(args.iters):
                fn(*inputs)
            times[name].append((clock() - start) / args.iters * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


def print_table(title: str, med: dict[str, float]) -> None:
    from stitch.runtime.tables import markdown_table

    print(f"\n{title}:\n")
    rows = [
        (
            name,
            f"{med[name]:.1f}",
            f"{med[name] - med['aot']:+.1f}",
            f"{med[name] / med['aot']:.2f}x",
        )
        for name in med
    ]
    headers = ("forward", "us per forward", "minus guard-free aot")
    print(markdown_table((*headers, "/ guard-free aot"), rows, align="lrrr"))


if __name__ == "__main__":
    main()
