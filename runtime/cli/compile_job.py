"""``stitch compile``: compile a model's forward from its config alone, without weights.

NOTE: [a compile without weights] (saved/weightless.py).  For a built-in
example, the forward ``stitch run --example`` compiles, so a later ``stitch
run`` with the same cache starts warm.  For a transformers model (``--hf
FAMILY``: a tiny config of that family; ``--config``: a checkpoint folder's
``config.json``), the graphs ``stitch run --hf`` compiles (``torch.compile``
with ``dynamic=True``): a later ``stitch run --hf`` with the same cache, or
that ``torch.compile`` of the model with its weights, loads every piece.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from typing import Any, TextIO

from stitch.core import StitchConfigError

from .options import int_list

# torch and the pipeline are imported by the functions that need them: the
# parser is built for every ``stitch`` command, ``--help`` included.


def compile_example(
    name: str,
    *,
    layers: int | None,
    cache_dir: str,
    compile_sizes: Sequence[int] = (),
    out: TextIO,
) -> int:
    """``stitch compile --example NAME``: what ``stitch run --example NAME`` loads."""

    from ..examples import LlamaModel, llama_inputs
    from ..saved.weightless import compile_without_weights
    from .main_job import EXAMPLE_DYNAMIC_DIMS, example_config
    from .model_choice import example_llama

    cfg = example_llama(name, layers, "compile")
    config = example_config(cfg, cache_dir=cache_dir, compile_sizes=compile_sizes)

    def build() -> Any:
        return LlamaModel(cfg).to(cfg.dtype)

    # The arguments of stitch run's aot_compile (main_job._aot_compile).
    done = compile_without_weights(
        build,
        llama_inputs(cfg, 1, seed=1),
        config,
        dynamic_dims=EXAMPLE_DYNAMIC_DIMS,
        name=f"example {name} ({cfg.num_layers} layers)",
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    later = f"stitch run --example {name} --layers {cfg.num_layers}"
    print(f"stitch compile: compiled without weights in {done.seconds:.2f}s", file=out)
    print(f"  saved forward: {done.saved}", file=out)
    if done.cache_entry:
        print(f"  cache entry: {done.cache_entry}", file=out)
    print(f"  peak memory: {peak:.0f} MiB", file=out)
    print(f"  a start with the weights that loads it: {later}", file=out)
    return 0


def hf_config(family: str | None, config_path: str | None, layers: int) -> Any:
    """The transformers config of ``--hf FAMILY`` or ``--config PATH``."""
    if family is not None:
        from ..hf.tiny_models import tiny_config

        return tiny_config(family, layers=layers)
    import transformers

    assert config_path is not None
    folder = config_path
    if os.path.isfile(config_path):
        if os.path.basename(config_path) != "config.json":
            raise StitchConfigError(
                f"stitch compile --config {config_path}: give a checkpoint folder "
                "or its config.json"
            )
        folder = os.path.dirname(os.path.abspath(config_path))
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise StitchConfigError(f"stitch compile --config: no config.json in {folder}")
    try:
        return transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise StitchConfigError(
            f"stitch compile --config: {os.path.join(folder, 'config.json')} is not "
            f"a transformers config ({type(exc).__name__}: {exc})"
        ) from exc


def compile_hf(
    family: str | None,
    config_path: str | None,
    *,
    layers: int,
    batch: int,
    cache_dir: str,
    out: TextIO,
) -> int:
    """``stitch compile --hf FAMILY`` or ``--config PATH``: the graphs ``stitch
    run --hf`` compiles (a batch of sequences, their length dynamic; length 1
    is a graph of its own)."""
    import time

    import transformers

    from ..config import CompilationConfig
    from ..hf.tiny_models import example_inputs
    from ..saved.weightless import trace_without_weights

    cfg = hf_config(family, config_path, layers)
    kind = family or "llama"  # a checkpoint's forward: a decoder's inputs
    calls = [example_inputs(kind, batch, n, seed=n) for n in (1, 2)]
    if family is None:
        for call in calls:
            call["input_ids"] = call["input_ids"] % cfg.vocab_size
    auto = transformers.AutoModelForCausalLM
    if family is not None:
        from ..hf.tiny_models import family as family_of

        if family_of(family).kind != "causal":
            auto = transformers.AutoModel

    def build() -> Any:
        return auto.from_config(cfg)

    start = time.perf_counter()
    compiled = trace_without_weights(
        build,
        calls,
        CompilationConfig(cache_dir=cache_dir),
        name=f"{type(cfg).__name__} from {family or config_path}",
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"stitch compile: {len(compiled)} graphs compiled without weights in "
        f"{time.perf_counter() - start:.2f}s (peak memory {peak:.0f} MiB)",
        file=out,
    )
    for result in compiled:
        print(f"  cache entry: {result.cache_dir}", file=out)
    later = (
        f"stitch run --hf {family} --layers {layers} --batch {batch}"
        if family
        else "torch.compile(model, backend=StitchBackend(CompilationConfig("
        "cache_dir=...)), dynamic=True) called with input_ids (and use_cache=False)"
    )
    print(f"  a start with the weights that loads every piece: {later}", file=out)
    return 0


def add_compile(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compile",
        help="compile a model from its config alone, without weights",
        description=(
            "Build a model on the meta device from its config (no weights, no "
            "download), compile its forward with Stitch and save it in the cache, so "
            "that a later start with the real weights loads it warm: no Dynamo, no "
            "Inductor.  --example: what 'stitch run --example' loads; --hf or "
            "--config: the graphs 'stitch run --hf' compiles (torch.compile with "
            "dynamic=True), whose pieces a later start loads."
        ),
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--example", "-e", metavar="NAME", help="built-in example model")
    model.add_argument("--hf", metavar="FAMILY", help="a tiny config of this family")
    model.add_argument(
        "--config", metavar="PATH", help="a checkpoint folder, or its config.json"
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=None,
        help="decoder layers (default: the example's; 2 for --hf)",
    )
    parser.add_argument(
        "--cache-dir",
        default="",
        metavar="DIR",
        help="cache root (default: $STITCH_CACHE_DIR or ~/.cache/stitch)",
    )
    parser.add_argument(
        "--batch", type=int, default=2, help="--hf/--config: sequences per forward"
    )
    parser.add_argument(
        "--compile-sizes",
        type=int_list,
        default=[],
        metavar="N,N,...",
        help="--example: sizes compiled with static shapes (as stitch run's)",
    )
    parser.set_defaults(handler=run_compile)


def run_compile(args: Any) -> int:
    import sys

    if args.example:
        return compile_example(
            args.example,
            layers=args.layers,
            cache_dir=args.cache_dir,
            compile_sizes=args.compile_sizes,
            out=sys.stdout,
        )
    return compile_hf(
        args.hf,
        args.config,
        layers=args.layers or 2,
        batch=args.batch,
        cache_dir=args.cache_dir,
        out=sys.stdout,
    )
