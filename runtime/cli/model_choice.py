"""The model a command runs: ``--example``, ``--hf``, ``--model`` or ``--module``, resolved once.

NOTE: [one resolution of the model choice]
``stitch run``, ``stitch profile`` and ``stitch check`` take their model the
same way:
:func:`add_model_choice` registers the flags, :func:`resolve_model` turns the
parsed arguments into a :class:`ModelChoice`, and a command compiles
``choice.model`` with :meth:`ModelChoice.compile`, runs each of
``choice.calls`` eagerly (:meth:`ModelChoice.eager`) and compiled
(:meth:`ModelChoice.compiled`) and compares the two within the tolerance of
their dtype (:meth:`ModelChoice.agree`).  ``resolve_model`` reads the options
of :func:`add_model_choice` and of ``options.add_model_options``.  A new way to name a model is one more branch
here, and every command has it.  (``stitch run --example`` compiles its
choice through the saved forward, ``main_job.run_example``: its tiered start
and static sizes are the examples' own; its comparison with eager and its
report are every model's: NOTE: [one comparison with eager] in
``eager_compare.py``.)
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from stitch.core.errors import StitchConfigError, StitchModelError, describe_exception

from .options import HF_FAMILIES

if TYPE_CHECKING:
    import torch

    from ..config import CompilationConfig
    from ..examples import LlamaConfig

# torch, transformers and the models are imported by the functions that need
# them: the parser is built for every ``stitch`` command, ``--help`` included.


@dataclasses.dataclass(frozen=True)
class Call:
    """One forward's inputs, and the size the tables show it under."""

    size: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """A model with the forwards a command runs it on.

    ``flag`` is how the command line named it (``--hf llama``, ``--model
    DIR``), ``description`` what was built ("LlamaForCausalLM, 2 layers,
    bfloat16 on cpu").  ``compile_options`` are ``torch.compile``'s
    (``dynamic=True``, or ``fullgraph=True`` where the calls mark their own
    unbacked dims), ``config_fields`` the ``CompilationConfig`` fields the
    model needs, ``reset`` what runs before every forward (the examples'
    attention writes their KV caches), ``outputs`` the tensors of a forward's
    result that are compared.
    """

    flag: str
    description: str
    model: torch.nn.Module
    calls: tuple[Call, ...]
    outputs: Callable[[Any], tuple[torch.Tensor, ...]]
    compile_options: dict[str, Any]
    config_fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    reset: Callable[[], None] | None = None

    def config(self, **fields: Any) -> CompilationConfig:
        """The config to compile under: ``fields`` and the model's own."""
        from ..config import CompilationConfig

        return CompilationConfig(**{**self.config_fields, **fields})

    def compile(self, backend: Any) -> Callable[..., Any]:
        import torch

        return torch.compile(self.model, backend=backend, **self.compile_options)

    def eager(self, call: Call) -> tuple[torch.Tensor, ...]:
        """The model's own output for ``call``; a failure names the model."""
        name = type(self.model).__name__
        try:
            tensors = self._forward(self.model, call)
        except Exception as exc:
            raise StitchModelError(
                f"{self.flag}: {name} fails on its own (eager) on the inputs of "
                f"size {call.size}: {describe_exception(exc)}"
            ) from exc
        if not tensors:
            raise StitchModelError(f"{self.flag}: {name} returns no tensor to compare")
        return tensors

    def compiled(self, fn: Callable[..., Any], call: Call) -> tuple[torch.Tensor, ...]:
        """``fn``'s output for ``call``; Dynamo's failure to trace names the model."""
        from ..compat.dynamo import trace_failure

        try:
            return self._forward(fn, call)
        except Exception as exc:
            why = trace_failure(exc)
            if why is None:
                raise
            raise StitchModelError(
                f"{self.flag}: Dynamo cannot trace {type(self.model).__name__}: {why}"
            ) from exc

    def _forward(self, fn: Callable[..., Any], call: Call) -> tuple[torch.Tensor, ...]:
        if self.reset is not None:
            self.reset()
        return self.outputs(fn(*call.args, **call.kwargs))

    @staticmethod
    def agree(
        expected: Sequence[torch.Tensor], actual: Sequence[torch.Tensor]
    ) -> tuple[float, bool]:
        """The largest difference between two forwards' outputs, and whether
        each output agrees within the tolerance of its dtype."""
        import torch

        from ..pipeline.tiered.controls import tolerance

        err, ok = 0.0, len(expected) == len(actual)
        for want, got in zip(expected, actual, strict=False):
            if want.shape != got.shape or want.dtype != got.dtype:
                err, ok = float("inf"), False
                continue
            if not want.numel() or not want.is_floating_point():
                if not torch.equal(want, got):
                    err, ok = float("inf"), False
                continue
            err = max(err, (want.double() - got.double()).abs().max().item())
            rtol, atol = tolerance(want.dtype)
            ok = ok and torch.allclose(want, got, rtol=rtol, atol=atol)
        return err, ok


def add_model_choice(parser: Any, examples: Sequence[str] | None = None) -> Any:
    """``--example``, ``--hf``, ``--model`` and ``--module`` (one of them is
    required), and ``--device``; returns the group, for a command's own choices.

    ``--example`` takes the runnable examples, or ``examples`` where given
    (``stitch emit`` prints the source of every example)."""
    from stitch.runtime.examples.models import runnable_examples

    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--example",
        "-e",
        metavar="NAME",
        choices=sorted(runnable_examples()) if examples is None else examples,
        help="built-in example model",
    )
    model.add_argument(
        "--hf",
        metavar="FAMILY",
        choices=HF_FAMILIES,
        help="a tiny random-weight transformers model of this family (needs "
        "'pip install stitch[hf]'), compiled with dynamic=True (--sizes are "
        "sequence lengths of a batch of --batch)",
    )
    model.add_argument(
        "--model",
        metavar="DIR",
        help="a transformers checkpoint folder: config.json, *.safetensors (or "
        "shards and their index), a tokenizer if any; loaded from local files "
        "only, in its dtype; compiled as --hf is",
    )
    model.add_argument(
        "--module",
        metavar="PKG.MOD:FACTORY",
        help="your own nn.Module: FACTORY() returns (model, args), (model, args, "
        "kwargs) or (model, inputs) with inputs(size) giving each size's args "
        "(docs/compiling.md, Your own model)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="--model: the device to load it on (default: cpu)",
    )
    return model


def resolve_model(args: argparse.Namespace, *, sizes: Sequence[int]) -> ModelChoice:
    """The :class:`ModelChoice` the parsed ``args`` name, with one call per size
    of ``args.sizes`` (``sizes`` when none were given)."""
    check_flags(args)
    wanted = list(args.sizes or sizes)
    if args.example:
        return example_choice(args.example, args.layers, wanted, args.command)
    if args.hf:
        return _family(args.hf, args.layers or 2, args.batch, args.attn, wanted)
    if args.model:
        return _checkpoint(
            args.model, args.device or "cpu", args.batch, args.attn, wanted
        )
    if args.module:
        return _module(args.module, wanted, given=bool(args.sizes))
    raise StitchConfigError(
        "no model chosen: give --example, --hf, --model or --module"
    )


def check_flags(args: argparse.Namespace) -> None:
    """Refuse an option the chosen model does not take (rather than ignore it)."""
    if args.device is not None and not args.model:
        raise StitchConfigError("--device applies to --model only")
    if args.layers is not None and (args.model or args.module):
        raise StitchConfigError(
            "--layers applies to --example and --hf (a checkpoint or a factory "
            "has its own)"
        )


def _attn(name: str) -> str | None:
    return None if name == "default" else name


def example_llama(name: str, layers: int | None, command: str) -> LlamaConfig:
    """The config of built-in example ``name`` (exits naming the runnable ones)."""
    from ..examples import LlamaConfig
    from ..examples.models import runnable_examples

    runnable = runnable_examples()
    if name not in runnable:
        known = ", ".join(sorted(runnable))
        raise SystemExit(
            f"stitch {command}: unknown example {name!r} (runnable: {known})"
        )
    return LlamaConfig(num_layers=layers or runnable[name])


def example_choice(
    name: str, layers: int | None, sizes: list[int], command: str
) -> ModelChoice:
    """Built-in example ``name`` (``--example``), one call per size."""
    from ..compat.dynamo import mark_unbacked
    from ..examples import build_llama, llama_inputs

    cfg = example_llama(name, layers, command)
    calls = []
    for n in sizes:
        if not 1 <= n <= cfg.max_seqs:
            raise StitchConfigError(f"size {n} must be in [1, {cfg.max_seqs}]")
        inputs = llama_inputs(cfg, n, seed=n)
        # One graph for every token count (see the README).
        for t in inputs:
            mark_unbacked(t, 0)
        calls.append(Call(n, inputs, {}))
    model = build_llama(cfg)
    return ModelChoice(
        flag=f"--example {name}",
        description=f"{cfg.num_layers} layers",
        model=model,
        calls=tuple(calls),
        outputs=lambda out: (out,),
        compile_options={"fullgraph": True},
        # An example's batches hold at most its max_seqs tokens.
        config_fields={"max_num_batched_tokens": cfg.max_seqs},
        reset=model.reset_kv_caches,
    )


def _family(
    family: str, layers: int, batch: int, attn: str, sizes: list[int]
) -> ModelChoice:
    from stitch.runtime.hf import build_model, example_inputs, output_tensor

    model = build_model(family, layers=layers, attn_implementation=_attn(attn))
    return ModelChoice(
        flag=f"--hf {family}",
        description=(
            f"{type(model).__name__}, {layers} layers, attn_implementation="
            f"{model.config._attn_implementation!r}, batch {batch}"
        ),
        model=model,
        calls=tuple(
            Call(n, (), example_inputs(family, batch, n, seed=n)) for n in sizes
        ),
        outputs=lambda out: (output_tensor(family, out),),
        compile_options={"dynamic": True},
    )


def _checkpoint(
    folder: str, device: str, batch: int, attn: str, sizes: list[int]
) -> ModelChoice:
    from stitch.runtime.hf.checkpoint import load_checkpoint, output_tensor

    ckpt = load_checkpoint(folder, device=device, attn_implementation=_attn(attn))
    model = ckpt.model
    layers = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    return ModelChoice(
        flag=f"--model {folder}",
        description=(
            f"{type(model).__name__}"
            + (f", {layers} layers" if layers is not None else "")
            + f", {str(ckpt.dtype).removeprefix('torch.')} on {ckpt.device}, "
            f"attn_implementation={model.config._attn_implementation!r}, "
            f"batch {batch}, input ids "
            + ("from its tokenizer" if ckpt.tokenizer is not None else "at random")
        ),
        model=model,
        calls=tuple(Call(n, (), ckpt.inputs(batch, n, seed=n)) for n in sizes),
        outputs=lambda out: (output_tensor(out),),
        compile_options={"dynamic": True},
    )


def _module(spec: str, sizes: list[int], *, given: bool) -> ModelChoice:
    from .module_factory import load_factory

    factory = load_factory(spec)
    if factory.sized is None:
        if given:
            raise StitchModelError(
                f"--module {spec}: --sizes needs inputs(size): the factory "
                "returned the inputs of one forward"
            )
        args, kwargs = factory.fixed
        calls: tuple[Call, ...] = (Call(factory.fixed_size(), args, kwargs),)
    else:
        calls = tuple(Call(n, *factory.call(n)) for n in sizes)
    return ModelChoice(
        flag=f"--module {spec}",
        description=type(factory.model).__name__,
        model=factory.model,
        calls=calls,
        outputs=_tensors,
        compile_options={"dynamic": True},
    )


def _tensors(output: Any) -> tuple[torch.Tensor, ...]:
    """The tensors of a factory model's output, all compared: the output
    itself, or every tensor of a tuple, list or dict."""
    import torch

    from ..compat.pytree import tree_leaves

    return tuple(t for t in tree_leaves(output) if isinstance(t, torch.Tensor))
