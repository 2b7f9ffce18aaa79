"""A transformers checkpoint folder with its weights (``stitch run --model DIR``).

The folder is checked before transformers reads it, so that each fault is named
by its file, not by a traceback from inside transformers: the folder, its
``config.json`` (a transformers config of a ``model_type`` this transformers
knows), its safetensors weights (one file, or shards and their index; each
file's header read whole) and, once loaded, that the weights cover every
parameter of the model.  It is loaded from local files only (never the hub),
in the checkpoint's dtype (its config's ``dtype``): the weights are read on
threads (stitch.runtime.weights) while transformers is imported, then handed
to ``from_pretrained``, which builds the model on the meta device and puts
them on the device once.
A tokenizer in the folder makes the example input ids from a short prompt;
without one they are random ids of the vocabulary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

import torch

from stitch.core.errors import StitchModelError, describe_exception

from ..weights import Timeline, start_reading

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_FILE = "generation_config.json"
# Any of these makes the folder hold a tokenizer (AutoTokenizer reads them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
PROMPT = "Stitch splits a model at its attention and compiles the pieces between."


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: its model (eval mode, on its device) and how to
    make its inputs."""

    folder: str
    model: torch.nn.Module
    # The safetensors files the weights were read from, in order.
    weights: tuple[str, ...]
    tokenizer: Any | None
    # A causal LM (logits, ``use_cache=False``), else an encoder (its last
    # hidden state, an attention mask), as the families of ``--hf`` are.
    causal: bool

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def inputs(self, batch: int, seq: int, *, seed: int = 0) -> dict[str, Any]:
        """Keyword arguments of one forward: ``batch`` sequences of ``seq`` tokens.

        With a tokenizer, the ids of :data:`PROMPT` repeated to ``seq`` tokens,
        row ``b`` starting at its ``b``-th token (so rows differ); without one,
        random ids of the vocabulary drawn from ``seed``.
        """
        vocab = _vocab_size(self.model.config)
        prompt = list(self.tokenizer(PROMPT)["input_ids"]) if self.tokenizer else []
        if prompt:
            rows = [
                [prompt[(b + i) % len(prompt)] for i in range(seq)]
                for b in range(batch)
            ]
            ids = torch.tensor(rows, dtype=torch.long)
        else:
            gen = torch.Generator().manual_seed(seed)
            ids = torch.randint(0, vocab, (batch, seq), generator=gen)
        ids = (ids % vocab).to(self.device)
        if self.causal:
            return {"input_ids": ids, "use_cache": False}
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def output_tensor(output: Any) -> torch.Tensor:
    """The tensor of a checkpoint's output that is compared: its logits, or
    its last hidden state."""
    for name in ("logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    return output[0]


def load_checkpoint(
    folder: str,
    *,
    device: str = "cpu",
    attn_implementation: str | None = None,
    timeline: Timeline | None = None,
) -> Checkpoint:
    """Check and load the checkpoint in ``folder``; every fault is a
    :class:`~stitch.core.errors.StitchModelError` naming the file.
    ``timeline`` gets the load's phases (``weight read``, ``meta build``:
    ``from_pretrained`` given the tensors read)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        what = "a file, not a folder" if os.path.exists(folder) else "no such folder"
        raise StitchModelError(f"--model {folder}: {what}")
    weights = weight_files(folder)
    for path in weights:
        _check_safetensors(path)
    target = _device(device)
    # NOTE: [a checkpoint's weights go to the device through from_pretrained]
    # The weights are read on threads while transformers is imported and the
    # config read (NOTE: [the order of a model's load] in runtime/weights),
    # into CPU memory: from_pretrained builds the model on the meta device
    # and puts each tensor on the device once.  Read straight to the device
    # instead, they would sit beside the block from_pretrained reserves for
    # the weights before it places them (caching_allocator_warmup), twice
    # the model on the device: a model over half of it would not load.  Read
    # into pinned memory, every byte would be pinned first, which costs more
    # than the pageable copy it saves.
    reader = start_reading(weights, "cpu", timeline=timeline)
    config = read_config(folder)
    if attn_implementation == "stitch":
        from .registration import register

        register()
    tensors = reader.wait()
    with reader.timeline.phase("meta build"):
        model = _load_model(folder, config, attn_implementation, tensors, target)
    causal = bool(getattr(model, "can_generate", lambda: False)())
    return Checkpoint(folder, model.eval(), weights, _load_tokenizer(folder), causal)


def _device(device: str) -> torch.device:
    """``device`` parsed, and usable: a CUDA device where CUDA is."""
    try:
        target = torch.device(device)
        if target.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("Torch not compiled with CUDA enabled, or no GPU")
    except (RuntimeError, ValueError) as exc:
        raise StitchModelError(f"--device {device}: {describe_exception(exc)}") from exc
    return target


def read_config(folder: str) -> Any:
    """The transformers config of ``folder``'s ``config.json``."""
    import transformers

    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise StitchModelError(
            f"--model {folder}: no {CONFIG_FILE} (a checkpoint folder holds "
            f"{CONFIG_FILE} and its weights, *.safetensors)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            fields = json.load(f)
    except (OSError, ValueError) as exc:
        raise StitchModelError(f"{path} is not readable JSON: {exc}") from exc
    model_type = fields.get("model_type") if isinstance(fields, dict) else None
    if not model_type:
        raise StitchModelError(
            f"{path} is not a transformers config: it has no 'model_type'"
        )
    if model_type not in transformers.CONFIG_MAPPING:
        raise StitchModelError(
            f"{path}: model_type {model_type!r} is unknown to transformers "
            f"{transformers.__version__}"
        )
    with _fails_as(f"{path} is not a transformers config"):
        return transformers.AutoConfig.from_pretrained(folder, local_files_only=True)


def weight_files(folder: str) -> tuple[str, ...]:
    """The safetensors files of ``folder``: the shards its index names, or
    every ``*.safetensors`` file."""
    index = os.path.join(folder, INDEX_FILE)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StitchModelError(
                f"{index} is not a safetensors index (a JSON object with a "
                f"'weight_map'): {describe_exception(exc)}"
            ) from exc
        paths = tuple(os.path.join(folder, name) for name in shards)
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise StitchModelError(
                f"{index} names {len(missing)} missing shard(s): {', '.join(missing)}"
            )
        return paths
    paths = tuple(
        os.path.join(folder, name)
        for name in sorted(os.listdir(folder))
        if name.endswith(".safetensors")
    )
    if not paths:
        raise StitchModelError(
            f"--model {folder}: no weights (no *.safetensors file); save them with "
            "save_pretrained(folder, safe_serialization=True)"
        )
    return paths


def _check_safetensors(path: str) -> None:
    """Read ``path``'s header: a truncated or foreign file fails here, by name."""
    from safetensors import safe_open

    with _fails_as(
        f"{path} is not a readable safetensors file (truncated or not safetensors?)"
    ):
        with safe_open(path, framework="pt") as f:
            f.keys()


def _model_class(config: Any) -> Any:
    """The class the checkpoint was saved from (its config's ``architectures``),
    else transformers' causal LM of the config, else its base model."""
    import transformers

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None) if name.isidentifier() else None
        if isinstance(cls, type):
            return cls
    if type(config) in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        return transformers.AutoModelForCausalLM
    return transformers.AutoModel


def _load_model(
    folder: str,
    config: Any,
    attn: str | None,
    tensors: dict[str, torch.Tensor],
    device: torch.device,
) -> torch.nn.Module:
    """transformers' model of ``config`` given the weights read (its own
    build on the meta device, renames, ties and computed buffers), on
    ``device``, with the folder's generation config."""
    import transformers.utils.logging as hf_logging

    cls = _model_class(config)
    device_map = _device_map(device)
    # NOTE: [the checkpoint's own report]: transformers logs a table of the
    # weights it missed or reshaped, then loads them at random (missing) or
    # raises pointing at that table (mismatched).  Both become one error here
    # that names the weights, so its table is left out.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(
            None,
            config=config,
            state_dict=tensors,
            dtype="auto",
            attn_implementation=attn,
            device_map=device_map,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
        )
    except Exception as exc:
        name = getattr(cls, "__name__", cls)
        raise StitchModelError(
            f"--model {folder}: {name}.from_pretrained failed: "
            f"{describe_exception(exc)}"
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_loaded(folder, type(model).__name__, info)
    _load_generation_config(folder, model)
    if device_map is None and device.type != "cpu":
        model.to(device)
    return model


def _device_map(device: torch.device) -> dict[str, torch.device] | None:
    """``from_pretrained``'s ``device_map`` for ``device``: none for the CPU,
    where it builds anyway, nor without accelerate, which transformers 5.17
    needs for any ``device_map`` (``stitch[hf]`` does not install it); the
    model then moves to ``device`` once it is loaded."""
    import importlib.util

    if device.type == "cpu" or importlib.util.find_spec("accelerate") is None:
        return None
    return {"": device}


def _load_generation_config(folder: str, model: Any) -> None:
    """The folder's ``generation_config.json``, as ``from_pretrained(folder)``
    reads it (the weights came as tensors, so it did not)."""
    import transformers

    if not os.path.isfile(os.path.join(folder, GENERATION_FILE)):
        return
    with _fails_as(f"{os.path.join(folder, GENERATION_FILE)} does not load"):
        model.generation_config = transformers.GenerationConfig.from_pretrained(
            folder, local_files_only=True
        )


def _check_loaded(folder: str, name: str, info: dict[str, Any]) -> None:
    """Refuse weights that do not cover the model: transformers would draw
    the missing and the reshaped ones at random."""
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise StitchModelError(
            f"--model {folder}: the weights lack {len(missing)} of {name}'s "
            f"parameters ({_some(missing)}); transformers would initialize them "
            "at random"
        )
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        shapes = [
            f"{key} {list(saved)} in the file, {list(wanted)} in the model"
            for key, saved, wanted in mismatched
        ]
        raise StitchModelError(
            f"--model {folder}: {len(mismatched)} weights do not have the shapes "
            f"{CONFIG_FILE} gives ({_some(shapes)})"
        )


def _some(items: list[str]) -> str:
    return ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")


def _load_tokenizer(folder: str) -> Any | None:
    if not any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        return None
    import transformers

    with _fails_as(f"--model {folder}: its tokenizer does not load"):
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)


@contextlib.contextmanager
def _fails_as(message: str) -> Iterator[None]:
    """Any error within raised again as a ``StitchModelError``: ``message``,
    then the error's own."""
    try:
        yield
    except Exception as exc:
        raise StitchModelError(f"{message}: {describe_exception(exc)}") from exc


def _vocab_size(config: Any) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = getattr(text, "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 1:
        raise StitchModelError(
            f"{type(config).__name__} has no vocab_size: --model runs models that "
            "take input_ids"
        )
    return vocab
