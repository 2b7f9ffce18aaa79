"""A model built with its parameters on meta, no random init, given the tensors it loads.

:func:`build_on_meta` runs a model's constructor with its parameters on the
meta device and their initializers skipped; :func:`place` puts the loaded
tensors in the model's parameters and buffers (the objects themselves: no
copy), ties again what the constructor tied, fills what the files and the
build both lack, and refuses to leave any tensor on the meta device.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook
from torch.overrides import TorchFunctionMode

from stitch.core.errors import StitchModelError

from .timeline import Timeline

M = TypeVar("M", bound=nn.Module)
# A buffer a constructor makes of at least this size is timed as the KV cache.
LARGE_BUFFER = 1 << 20

# The in-place initializers of torch.nn.init and of tensors that a module's
# constructor runs on its new weights.
INITIALIZERS = frozenset(
    {
        "normal_", "uniform_", "trunc_normal_", "constant_", "ones_", "zeros_",
        "eye_", "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
        "kaiming_normal_", "orthogonal_", "sparse_", "fill_", "zero_", "random_",
        "exponential_", "bernoulli_", "geometric_", "log_normal_", "cauchy_",
    }
)  # fmt: skip


class _BuildMode(TorchFunctionMode):
    """An initializer called on a meta tensor returns the tensor untouched;
    the large buffers made on the device are timed.

    NOTE: [no init on the meta device]
    Running an initializer on a meta tensor is not free: ``normal_`` has no
    meta kernel of its own and runs torch's Python reference, whose first call
    imports Dynamo (1.7 s here, seconds on a busy host).  The values are
    thrown away anyway.  A torch-function mode is this thread's only, so a
    build beside other threads (the weights' readers, an import) skips
    nothing of theirs.
    """

    def __init__(self, timeline: Timeline | None) -> None:
        super().__init__()
        self.timeline = timeline

    def __torch_function__(
        self, func: Any, types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in INITIALIZERS:
            # torch.nn.init passes its tensor by keyword, a method positionally.
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        start = time.perf_counter()
        out = func(*args, **kwargs)
        if (
            self.timeline is not None
            and isinstance(out, torch.Tensor)
            and not out.is_meta
            and out.nbytes >= LARGE_BUFFER
            and not name.startswith("empty")  # a parameter, before it goes to meta
        ):
            self.timeline.record("KV cache", start, time.perf_counter())
        return out


def build_on_meta(
    build: Callable[[], M],
    device: torch.device | str = "cpu",
    timeline: Timeline | None = None,
) -> M:
    """``build()`` with its parameters on the meta device and no initializer
    run on them; its buffers are made on ``device`` as the constructor makes
    them (the rotary frequencies computed, the KV caches zeroed once: the
    ``timeline``'s ``KV cache``, each buffer of 1 MiB or more).

    NOTE: [parameters on meta, buffers where they are made]
    Under ``torch.device("meta")`` every buffer would be meta too: a computed
    one (the rotary frequencies) would have to be computed again by code that
    knows the model, and meta factories such as ``arange`` run torch's Python
    references, which import Dynamo.  So the build runs on ``device``, and
    each parameter is swapped for a meta one as it is registered (a
    registration hook that acts on this thread only): its device memory is
    given back at once, uninitialized, and its init skipped (NOTE: [no init
    on the meta device]).  This is accelerate's ``init_empty_weights(
    include_buffers=False)``, without accelerate.
    """
    thread = threading.get_ident()

    def to_meta(module: nn.Module, name: str, param: Any) -> Any:
        if param is None or param.is_meta or threading.get_ident() != thread:
            return None
        return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    handle = register_module_parameter_registration_hook(to_meta)
    try:
        with torch.device(device), _BuildMode(timeline):
            return build()
    finally:
        handle.remove()


def _slots(model: nn.Module) -> dict[str, tuple[nn.Module, str, torch.Tensor]]:
    """Every parameter and buffer by each name it has (a tied one has several):
    its module, its name there, and the tensor."""
    slots: dict[str, tuple[nn.Module, str, torch.Tensor]] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for table in (module._parameters, module._buffers):
            for leaf, t in table.items():
                if t is not None:
                    slots[f"{prefix}.{leaf}" if prefix else leaf] = (module, leaf, t)
    return slots


def place(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    fill: Callable[[str, torch.Tensor], torch.Tensor | None] | None = None,
) -> None:
    """Make ``tensors`` the model's parameters and buffers, by name.

    A parameter becomes a ``Parameter`` over the given tensor (its dtype, its
    device; ``requires_grad`` as built), a buffer the tensor itself.  Names
    the constructor tied (one tensor under several names) get the one loaded
    tensor.  Each tensor still on the meta device after that (a parameter
    the files lack) is ``fill(name, meta_tensor)``; one that ``fill`` leaves
    out (returns None for), a loaded name the model lacks, and a shape other
    than the model's are a :class:`StitchModelError` naming them.
    """
    slots = _slots(model)
    unknown = sorted(set(tensors) - set(slots))
    if unknown:
        raise StitchModelError(
            f"{type(model).__name__} has no parameter or buffer named "
            f"{_some(unknown)} ({len(unknown)} of the loaded tensors)"
        )
    # The names each tensor of the build has: a tied group shares one object.
    groups: dict[int, list[str]] = {}
    for name, (_, _, t) in slots.items():
        groups.setdefault(id(t), []).append(name)
    for names in groups.values():
        loaded = [n for n in names if n in tensors]
        if loaded:
            _put(slots, names, tensors[loaded[0]], loaded[0])
    current = _slots(model)
    filled: set[int] = set()
    for name, (_, _, t) in current.items():
        if t.is_meta and id(t) not in filled:
            filled.add(id(t))
            value = fill(name, t) if fill is not None else None
            if value is not None:
                _put(current, groups[id(t)], value, name)
    missing = [n for n, (_, _, t) in _slots(model).items() if t.is_meta]
    if missing:
        raise StitchModelError(
            f"{type(model).__name__}: {len(missing)} parameters or buffers are "
            f"neither in the weights nor filled ({_some(missing)}); they would "
            "stay on the meta device"
        )


def _put(
    slots: dict[str, tuple[nn.Module, str, torch.Tensor]],
    names: list[str],
    value: torch.Tensor,
    source: str,
) -> None:
    """``value`` under each of ``names`` (one tied group), shape checked."""
    _, _, built = slots[names[0]]
    if tuple(value.shape) != tuple(built.shape):
        raise StitchModelError(
            f"{source}: the weights hold shape {list(value.shape)}, the model "
            f"{list(built.shape)}"
        )
    if isinstance(built, nn.Parameter):
        value = nn.Parameter(value, requires_grad=built.requires_grad)
    for name in names:
        module, leaf, _ = slots[name]
        table = module._parameters if leaf in module._parameters else module._buffers
        table[leaf] = value


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
