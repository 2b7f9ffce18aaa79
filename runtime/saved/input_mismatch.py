"""A saved forward checks what it is given (the runtime half of the input check).

NOTE: [what a saved forward does with an input it was not compiled for]
The emitted check (``codegen/input_check.py``) sends every input that fits a
saved signature straight to that signature's forward.  Anything else comes
here, off the hot path, and is diagnosed against each signature in Python:

- fits after all (the C++ guard also compares dispatch keys and
  ``requires_grad``, say for a tensor made under ``inference_mode``): the
  guard is rebuilt from these tensors, and the call goes ahead;
- differs only in layout from a signature, and the forward does not write into
  the tensor: a contiguous copy is provably the same input, so it runs on one;
- differs only in a relation between dynamic sizes (ids and positions of
  different lengths): the model asserted that relation while it was traced,
  so it is ``StitchInputError``;
- anything else (another integer dtype, a rank or a static size): the model is
  compiled for the new signature once, saved beside the first, and the check is
  generated again with one more branch, in this process and for every later
  one.  If that compile fails (Dynamo's trace rejects it, as eager would:
  float token ids), the input is ``StitchInputError``, remembered on disk so
  that no process traces it again.

Files beside the saved record (``<record>/``): ``input_check.py`` (the emitted
check) and ``signatures.py`` (a literal: the signatures in check order, the
record folder of each, the rejected ones; its ``check_sha256`` pins the check).
A signature compiled later is a record of its own in ``<record>.sig_<key>/``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from stitch.codegen.input_check import (
    FORWARDS,
    FUNCTION,
    GUARDS,
    IN_RANGE,
    MISMATCH,
    InputCheckSpec,
    ObjectInput,
    TensorInput,
)
from stitch.core.errors import StitchCacheError, StitchInputError

from ..loader import bind_kwonly, load_execution_module
from ..store import codec, location
from ..store.digests import content_hash
from ..store.files import atomic_write
from ..store.records import SavedSignature, SignaturesRecord
from ..store.trust import check_trusted
from .arguments import CallArgs, resolve, split_args
from .input_signature import (
    Mismatch,
    SizedGuards,
    describe,
    in_range,
    mismatches,
    static_guards,
    tensor_guards,
    written,
)
from .record import StaleRecord, model_name

if TYPE_CHECKING:
    from .forward_store import SavedForwardStore

log = logging.getLogger("stitch")

CHECK_FILE = location.AOT_CHECK_FILE


# -- the check of one saved forward -------------------------------------------------------


class InputCheck:
    """The emitted check of one saved forward, its signatures' forwards, and the slow path."""

    def __init__(
        self,
        store: SavedForwardStore,
        spec: InputCheckSpec,
        forwards: list[Any],
        folders: list[str | None],
        state: dict[str, Any],
        folder: str | None,
    ) -> None:
        self.store = store  # loads and compiles every signature's forward
        self.model = store.model
        self.spec = spec
        self.forwards = forwards
        self.folders = folders
        self.state = state  # dims, rejected: what signatures.py holds besides them
        self.folder = folder
        self.lock = threading.RLock()
        self.namespace: dict[str, Any] = {}
        self.function: types.FunctionType | None = None

    @property
    def forward(self) -> types.MethodType:
        assert self.function is not None
        return types.MethodType(self.function, self.model)

    def install(self, code: str, path: str | None) -> None:
        """Load ``code`` (the check for the current signatures) and make it the check.

        NOTE: [a new signature joins the running check]
        Callers hold the bound check function (``compiled.forward``), so a check
        generated again with one more branch replaces the code and globals of the
        same function object: every holder runs the new check on its next call.
        """
        namespace = load_execution_module(
            code,
            None,
            filename=path,
            extra_globals={GUARDS: tensor_guards, IN_RANGE: in_range},
        )
        fn = bind_kwonly(
            bind_kwonly(namespace[FUNCTION], FORWARDS, self.forwards),
            MISMATCH,
            self.mismatch,
        )
        if self.function is None:
            self.namespace, self.function = namespace, fn
            return
        self.namespace.clear()
        self.namespace.update(namespace)
        self.function.__kwdefaults__ = fn.__kwdefaults__
        self.function.__code__ = fn.__code__

    # -- the slow path -----------------------------------------------------------------

    def mismatch(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        # The check passes keywords as it was called: exactly spec.keywords.
        keywords = self.spec.keywords
        values = CallArgs((*args, *(kwargs[k] for k in keywords)), keywords)
        with self.lock:
            return self._mismatch(model, values)

    def _mismatch(self, model: Any, args: CallArgs) -> Any:
        if len(args) != len(self.spec.params) - 1:
            raise StitchInputError(
                f"{self.spec.forward} was compiled for {len(self.spec.params) - 1} "
                f"arguments ({', '.join(self.spec.params[1:])}), got {len(args)}"
            )
        found = [mismatches(sig, args) for sig in self.spec.signatures]
        for i, m in enumerate(found):
            if not m:  # only what the C++ guard adds (dispatch keys, requires_grad)
                self._rebuild_guard(i, args)
                return call(self.forwards[i], model, args)
        for i, m in enumerate(found):
            names = {x.name for x in m}
            # A tensor inside an object (a cache) is never copied: it is written.
            if (
                all(x.kind == "layout" for x in m)
                and names <= set(self.spec.params)
                and not written(self.spec.signatures[i], m)
            ):
                copies = [
                    (
                        a.clone(memory_format=torch.contiguous_format)
                        if name in names
                        else a
                    )
                    for name, a in zip(self.spec.params[1:], args, strict=False)
                ]
                return call(self.forwards[i], model, args.like(copies))
        closest = min(found, key=len)
        # No compile changes these: the model asserted the relation while it
        # was traced, and eager raises IndexError for an id outside the table.
        hints = {
            "relation": "the model requires these sizes to be equal",
            "bounds": "they index an embedding table",
        }
        refused = [x for x in closest if x.kind in hints]
        if refused:
            raise StitchInputError(
                f"{self.spec.forward}: "
                + "; ".join(f"{x} ({hints[x.kind]})" for x in refused)
            )
        return self._compile(model, args, closest)

    def _rebuild_guard(self, i: int, args: Sequence[Any]) -> None:
        sig = self.spec.signatures[i]
        specs: list[TensorInput] = []
        tensors = []
        for spec, a in zip(sig.inputs, args, strict=False):
            if isinstance(spec, TensorInput):
                specs.append(spec)
                tensors.append(a)
            elif isinstance(spec, ObjectInput):
                specs.extend(spec.tensors)
                tensors.extend(resolve(a, t.name, spec.name) for t in spec.tensors)
        guard = self.namespace[f"SIGNATURE_{i}"]
        if isinstance(guard, SizedGuards):
            guard.rebuild(tensors)
            return
        sizes = [[s if isinstance(s, int) else None for s in t.sizes] for t in specs]
        strides = [t.strides for t in specs]
        self.namespace[f"SIGNATURE_{i}"] = static_guards(tensors, sizes, strides)

    def _compile(self, model: Any, args: CallArgs, closest: list[Mismatch]) -> Any:
        dims = first_dims(self, args)
        names = self.spec.params[1:]
        shape = describe(names, args, dims, ()).key()
        rejected = self.state["rejected"]
        if shape in rejected:
            raise StitchInputError(rejected[shape])
        folder = (
            location.aot_signature_folder(self.folder, shape) if self.folder else None
        )
        # The first few differences say what changed (a cache's 16 tensors
        # differ the same way: the first names it).
        shown = "; ".join(str(m) for m in closest[:3])
        if len(closest) > 3:
            shown += f"; and {len(closest) - 3} more"
        log.warning(
            "stitch aot: %s was not compiled for these inputs (%s); compiling it for them",
            model_name(self.model),
            shown,
        )
        try:
            forward, saved, backend = self.store.compile_and_save(args, dims, folder)
        except Exception as exc:  # noqa: BLE001 - the trace rejects what eager rejects
            message = (
                f"{self.spec.forward}: {closest[0]}; compiling the model for these "
                f"inputs failed ({_first_line(exc)})"
            )
            rejected[shape] = message
            self._save()
            raise StitchInputError(message) from exc
        sig = describe(names, args, dims, backend.graph_inputs)
        self.spec = dataclasses.replace(
            self.spec, signatures=(*self.spec.signatures, sig)
        )
        self.forwards.append(unbound(forward))
        self.folders.append(os.path.basename(saved) if saved else None)
        self._save()
        # Through the new check: what the compile did not look at (token ids
        # out of range, say) is still refused before a kernel runs.
        assert self.function is not None
        return call(self.function, model, args)

    def _save(self) -> None:
        """Generate the check again, write it and ``signatures.py`` (when saved), load it."""
        from stitch.codegen.input_check import generate_input_check

        code = generate_input_check(self.spec)
        path = None
        if self.folder is not None:
            path = location.aot_check_file(self.folder)
            try:
                write_signatures(self.folder, code, self.spec, self.folders, self.state)
            except OSError as exc:
                log.warning("stitch aot: could not write %s (%s)", self.folder, exc)
                path = None
        self.install(code, path)


def first_dims(check: InputCheck, args: Sequence[Any]) -> list[list[int]]:
    """The first signature's dynamic dims, for other inputs (those they have)."""
    return [
        [d for d in dyn if isinstance(a, torch.Tensor) and d < a.dim()]
        for dyn, a in zip(check.state["dims"], args, strict=False)
    ]


def unbound(forward: Any) -> Any:
    if isinstance(forward, types.MethodType):
        return forward.__func__
    return lambda _self, *args, **kwargs: forward(*args, **kwargs)


def call(fn: Any, model: Any, args: Sequence[Any]) -> Any:
    """``fn(model, ...)`` with ``args`` passed as they came (NOTE: [a call's
    arguments in one tuple] in arguments.py)."""
    positional, kwargs = split_args(args)
    return fn(model, *positional, **kwargs)


def _first_line(exc: BaseException) -> str:
    """What the trace said, from the error at the bottom of the chain (Dynamo wraps
    the fake-tensor error that names the op's requirement)."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    text = str(exc).strip()
    # Dynamo's fake-tensor failures name the op's own error on one line.
    found = re.search(r"got (\w+)\((['\"])(.*)\2\)\s*$", text, re.MULTILINE)
    if found:
        return f"{found.group(1)}: {found.group(3)[:300]}"
    lines = text.splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


# -- the files ---------------------------------------------------------------------------


def write_signatures(
    folder: str,
    code: str,
    spec: InputCheckSpec,
    folders: Sequence[str | None],
    state: dict[str, Any],
) -> None:
    """The check, then ``signatures.py`` (its presence and sha256 commit the check)."""
    atomic_write(location.aot_check_file(folder), code.encode("utf-8"))
    record = SignaturesRecord(
        forward=spec.forward,
        params=tuple(spec.params),
        keywords=tuple(spec.keywords),
        dims=tuple(tuple(d) for d in state["dims"]),
        signatures=tuple(
            SavedSignature(f or "", tuple(s.to_literal()))
            for f, s in zip(folders, spec.signatures, strict=True)
        ),
        rejected=dict(sorted(state["rejected"].items())),
        check_sha256=content_hash(code.encode("utf-8")),
    )
    atomic_write(location.aot_signatures_file(folder), codec.encode(record))


def read_signatures(folder: str) -> tuple[SignaturesRecord, str]:
    """``signatures.py`` and the check it pins; StaleRecord when there is none;
    :class:`RecordError` naming a bad field."""
    root = location.root_of_aot(folder)
    paths = [location.aot_signatures_file(folder), location.aot_check_file(folder)]
    for path in paths:
        check_trusted(path, root)
    try:
        with open(paths[0], "rb") as f:
            data = f.read()
        with open(paths[1], encoding="utf-8") as f:
            code = f.read()
    except FileNotFoundError:
        raise StaleRecord("it has no input check") from None
    record = codec.decode(SignaturesRecord, data, paths[0])
    if content_hash(code.encode("utf-8")) != record.check_sha256:
        raise StitchCacheError(f"{paths[1]} does not match its sha256")
    return record, code
