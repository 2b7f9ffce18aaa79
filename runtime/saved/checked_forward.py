"""The saved forward behind its input check: after a compile, after a load, and later signatures on first use.

See NOTE: [what a saved forward does with an input it was not compiled for]
in ``input_mismatch.py``.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stitch.codegen.input_check import InputCheckSpec, InputSignature
from stitch.core.errors import StitchCacheError, StitchError

from ..pipeline.api import GraphInput
from ..store import location
from .arguments import CallArgs
from .input_mismatch import (
    InputCheck,
    first_dims,
    read_signatures,
    unbound,
)
from .input_signature import describe, forward_params
from .record import StaleRecord, model_name

if TYPE_CHECKING:
    from .forward_store import SavedForwardStore

log = logging.getLogger("stitch")


def after_compile(
    store: SavedForwardStore,
    forward: Any,
    saved: str | None,
    args: Sequence[Any],
    dims: Sequence[Sequence[int]],
    graph: Sequence[GraphInput],
) -> Any:
    """The compiled forward behind a new input check (written beside the record)."""
    if not isinstance(forward, types.MethodType):
        return forward  # the Dynamo-entered fallback: Dynamo's guards check
    model = store.model
    keywords = tuple(getattr(args, "keywords", ()))
    params = (*forward_params(model, len(args) - len(keywords)), *keywords)
    sig = describe(params[1:], args, dims, graph)
    spec = InputCheckSpec(f"{model_name(model)}.forward", params, (sig,), keywords)
    state = {"dims": [list(d) for d in dims], "rejected": {}}
    check = InputCheck(store, spec, [unbound(forward)], [""], state, saved)
    check._save()
    return check.forward


def after_load(store: SavedForwardStore, forward: Any, folder: str) -> Any:
    """The loaded forward behind its saved check; later signatures load on first use."""
    record, code = read_signatures(folder)
    # The record's fields are checked by its reader; the signatures' inputs
    # (codegen's literal form) by InputSignature.from_literal.
    try:
        sigs = tuple(
            InputSignature.from_literal(list(s.inputs)) for s in record.signatures
        )
    except (KeyError, TypeError, StitchError) as exc:
        raise StitchCacheError(
            f"{location.aot_signatures_file(folder)} is malformed ({exc})"
        ) from None
    spec = InputCheckSpec(record.forward, record.params, sigs, record.keywords)
    folders = [s.folder or None for s in record.signatures]
    state = {"dims": record.dims, "rejected": dict(record.rejected)}
    check = InputCheck(store, spec, [unbound(forward)], folders, state, folder)
    check.forwards.extend(LazyForward(check, i) for i in range(1, len(sigs)))
    check.install(code, location.aot_check_file(folder))
    return check.forward


class LazyForward:
    """A later signature's saved forward, loaded on its first call (then replaced)."""

    def __init__(self, check: InputCheck, index: int) -> None:
        self.check = check
        self.index = index

    def __call__(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        check = self.check
        keywords = check.spec.keywords
        values = CallArgs((*args, *(kwargs[k] for k in keywords)), keywords)
        with check.lock:
            forward = check.forwards[self.index]
            if forward is self:
                folder = location.aot_sibling(check.folder, check.folders[self.index])
                try:
                    forward = self._load(values, folder)
                except (
                    StaleRecord,
                    StitchCacheError,
                    OSError,
                    ValueError,
                    KeyError,
                ) as exc:
                    forward = self._compile(values, folder, exc)
                check.forwards[self.index] = forward
        return forward(model, *args, **kwargs)

    def _compile(self, args: Sequence[Any], folder: str, exc: Exception) -> Any:
        check = self.check
        log.warning(
            "stitch aot: the saved %s for signature %d is unusable (%s); compiling it again",
            model_name(check.model),
            self.index,
            exc,
        )
        forward, _, _ = check.store.compile_and_save(
            args, first_dims(check, args), folder
        )
        return unbound(forward)

    def _load(self, args: Sequence[Any], folder: str) -> Any:
        check = self.check
        loaded = check.store.load(
            folder, check.store.factors(args, first_dims(check, args)), guards=False
        )
        if loaded is None:
            raise StitchCacheError(f"{folder} holds no saved forward")
        return unbound(loaded[0])
