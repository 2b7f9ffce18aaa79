"""The input check of a saved forward: a description of the expected inputs -> source.

NOTE: [the input check is emitted source]
A saved forward (``aot_compile``) runs without Dynamo's guards, so nothing
stops an input it was not compiled for from reaching compiled kernels (an
int32 index into a kernel that assumes int64 aborts the process).  Its input
check is emitted like the stitching source: plain, black-formatted Python in the
saved record, shown by ``stitch inspect``, loaded under a real file path.  It
defines one function named after the model's forward parameters; per saved
signature it tests every tensor argument's dtype, device, rank, sizes and
strides in one C++ call (``SIGNATURE_<i>[n0].check(...)``, a ``TensorGuards``
the loader builds from the literal next to it), then the values of non-tensor
arguments, and calls that signature's forward.

NOTE: [a guard per token count]
The dynamic sizes (``n0``, ...) are read once, first (``n0 =
input_ids.shape[0]``, where the symbol first appears), and pick the guard
built for exactly those sizes: every size and stride in it is static, so the
one C++ call also checks the relations between the dynamic sizes (the ids
and positions share one token count) that eight ``numel()`` reads in Python
checked before.  The loader builds such a guard on the first call with each
size (``runtime/saved/input_signature.py``, ``SizedGuards``).  An input that fits
no signature goes to ``__stitch_mismatch__`` (the runtime): it converts,
compiles for the new signature, or raises ``StitchInputError``.

This module is pure: a :class:`InputCheckSpec` in, a string out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from typing import Any, Union

from stitch.core.errors import StitchCodegenError
from stitch.core.hashing import key_hash

# 2: a guard per value of the dynamic sizes (NOTE: [a guard per token count]).
CHECK_FORMAT = 2
TEMPLATE = "input_check.py.j2"
# Names the emitted check and its loader share.
FUNCTION = "check_forward"
FORWARDS = "__stitch_forwards__"
MISMATCH = "__stitch_mismatch__"
GUARDS = "__stitch_tensor_guards__"
IN_RANGE = "__stitch_in_range__"


@dataclasses.dataclass(frozen=True)
class TensorInput:
    """A tensor argument as compiled.

    ``sizes``: an int per static dim, a symbol name per dynamic one (dims with
    the same symbol must be equal).  ``strides``: the layout the compiled code
    requires, None where a stride depends on a dynamic size.  ``mutated``: the
    forward writes into it (so a copy would not be the same call).
    """

    name: str
    dtype: str
    device: str
    sizes: tuple[int | str, ...]
    strides: tuple[int | None, ...]
    contiguous: bool
    mutated: bool = False
    # Indices of a table of this many rows: values must be in [0, index_bound).
    index_bound: int | None = None

    def describe(self) -> str:
        dims = ", ".join(str(s) for s in self.sizes)
        layout = "contiguous" if self.contiguous else f"strides {self.strides}"
        bound = f", values in [0, {self.index_bound})" if self.index_bound else ""
        return f"{self.dtype}[{dims}] on {self.device}, {layout}{bound}"


@dataclasses.dataclass(frozen=True)
class ValueInput:
    """A non-tensor argument: its type, and the literal it was compiled with
    (None: only the type is checked)."""

    name: str
    type: str
    value: str | None

    def describe(self) -> str:
        return self.value if self.value is not None else f"a {self.type}"


@dataclasses.dataclass(frozen=True)
class ObjectInput:
    """An object argument (a transformers ``StaticCache``): its exact type and the
    tensors the forward reads from it, each named by the expression that reads it
    (``past_key_values.layers[0].keys``; see NOTE: [the tensors of an object
    argument] in runtime/saved/arguments.py)."""

    name: str
    module: str
    qualname: str
    tensors: tuple[TensorInput, ...]

    def describe(self) -> str:
        return f"a {self.module}.{self.qualname} ({len(self.tensors)} tensors)"


Input = Union[TensorInput, ValueInput, ObjectInput]


@dataclasses.dataclass(frozen=True)
class InputSignature:
    """The inputs one saved forward was compiled for, in parameter order."""

    inputs: tuple[Input, ...]

    def to_literal(self) -> list[dict[str, Any]]:
        return [_input_literal(i) for i in self.inputs]

    @classmethod
    def from_literal(cls, value: Any) -> InputSignature:
        if not isinstance(value, list):
            raise StitchCodegenError(f"an input signature is not a list: {value!r}")
        return cls(tuple(_input_from_literal(item) for item in value))

    def key(self) -> str:
        """The key a later signature's folder and a rejected input are filed
        under (the one key hash; 16 characters before it, so an older cache's
        rejected inputs are traced once more, then filed again)."""
        return key_hash(self.to_literal())


def _input_literal(i: Input) -> dict[str, Any]:
    if isinstance(i, ObjectInput):
        tensors = [_input_literal(t) for t in i.tensors]
        return {"kind": "object", **dataclasses.asdict(i), "tensors": tensors}
    kind = "tensor" if isinstance(i, TensorInput) else "value"
    return {"kind": kind, **dataclasses.asdict(i)}


def _input_from_literal(item: Any) -> Input:
    try:
        fields = dict(item)
        kind = fields.pop("kind", None)
        if kind == "tensor":
            fields["sizes"] = tuple(fields["sizes"])
            fields["strides"] = tuple(fields["strides"])
            return TensorInput(**fields)
        if kind == "value":
            return ValueInput(**fields)
        if kind == "object":
            tensors = tuple(_input_from_literal(t) for t in fields.pop("tensors"))
            if not all(isinstance(t, TensorInput) for t in tensors):
                raise TypeError("an object holds a non-tensor")
            return ObjectInput(tensors=tensors, **fields)  # type: ignore[arg-type]
    except (TypeError, ValueError, KeyError) as exc:
        raise StitchCodegenError(f"an input signature holds {item!r} ({exc})") from None
    raise StitchCodegenError(f"an input signature holds {item!r}")


@dataclasses.dataclass(frozen=True)
class InputCheckSpec:
    """What the check is generated from: the forward's qualified name, its
    parameter names (``self`` first) and the saved signatures, in order.
    ``keywords``: the trailing parameters the forward was called with by
    keyword (keyword-only in the check)."""

    forward: str
    params: tuple[str, ...]
    signatures: tuple[InputSignature, ...]
    keywords: tuple[str, ...] = ()

    def call(self, prefix: str) -> str:
        """``prefix(self, a, b, c=c)``: a call passing every parameter as it came."""
        cut = len(self.params) - len(self.keywords)
        parts = [*self.params[:cut], *(f"{k}={k}" for k in self.params[cut:])]
        return f"{prefix}({', '.join(parts)})"


@dataclasses.dataclass(frozen=True)
class SignatureContext:
    """One signature, prepared for the template: every decision made here."""

    index: int
    comments: list[str]
    guards: str
    condition: str
    call: str


@dataclasses.dataclass(frozen=True)
class SizeRead:
    """A dynamic size read at the top of the check: ``name = source``."""

    name: str
    source: str


def generate_input_check(spec: InputCheckSpec) -> str:
    """The check's source, formatted by black."""
    from .emit import format_source, template_environment

    if not spec.signatures:
        raise StitchCodegenError(f"the input check of {spec.forward} has no signature")
    if spec.keywords and tuple(spec.params[-len(spec.keywords) :]) != spec.keywords:
        raise StitchCodegenError(
            f"{spec.forward}: keywords {list(spec.keywords)} are not the last "
            f"parameters of {list(spec.params)}"
        )
    cut = len(spec.params) - len(spec.keywords)
    args = ", ".join(spec.params[:cut])
    if spec.keywords:
        args += ", *, " + ", ".join(spec.keywords)
    reads: dict[str, SizeRead] = {}  # by source
    contexts = [
        _signature(i, sig, spec, reads) for i, sig in enumerate(spec.signatures)
    ]
    described: tuple[Any, ...] = (spec.forward, spec.params)
    if spec.keywords:
        described += (spec.keywords,)
    digest = hashlib.sha256(
        repr((*described, [s.to_literal() for s in spec.signatures])).encode()
    ).hexdigest()
    source = (
        template_environment()
        .get_template(TEMPLATE)
        .render(
            header=[
                f"Stitch input check of {spec.forward} "
                f"({len(spec.signatures)} signature(s))",
                f"input check format {CHECK_FORMAT}, sha256 {digest[:16]}",
            ],
            function=FUNCTION,
            signature=f"{args}{', ' if spec.keywords else ', *, '}{FORWARDS}, {MISMATCH}",
            docstring=f"The forward compiled for these inputs, else {MISMATCH}.",
            sizes=list(reads.values()),
            signatures=contexts,
            mismatch=spec.call(MISMATCH),
        )
    )
    return format_source(source)


def _signature(
    index: int,
    sig: InputSignature,
    spec: InputCheckSpec,
    reads: dict[str, SizeRead],
) -> SignatureContext:
    params = spec.params
    names = [i.name for i in sig.inputs]
    if list(params[1:]) != names:
        raise StitchCodegenError(
            f"signature {index} names inputs {names}, the forward takes {list(params[1:])}"
        )
    tensors: list[TensorInput] = []
    for i in sig.inputs:
        if isinstance(i, ObjectInput):
            tensors.extend(i.tensors)
        elif isinstance(i, TensorInput):
            tensors.append(i)
    guard_name = f"SIGNATURE_{index}"
    entries = ", ".join(
        repr((t.name, t.dtype, t.device, t.sizes, t.strides, t.contiguous))
        for t in tensors
    )
    # NOTE: [the tensors of an object argument]: read once, at the top, where a
    # missing attribute sends the call to the mismatch path.
    values = {
        t.name: (t.name if t.name.isidentifier() else _read(t.name, params, reads, "t"))
        for t in tensors
    }
    terms = []
    variables: dict[str, str] = {}  # symbol -> the variable holding its value
    if tensors:
        # NOTE: [a guard per token count]: the size variables pick the guard.
        for symbol, source in _symbol_sources(tensors):
            variables[symbol] = _read(source, params, reads, "n")
        pick = f"[{', '.join(variables.values())}]" if variables else ""
        terms.append(
            f"{guard_name}{pick}.check({', '.join(values[t.name] for t in tensors)})"
        )
    terms.extend(_bounds(t, variables) for t in tensors if _checks_bounds(t))
    for v in sig.inputs:
        if isinstance(v, ValueInput):
            terms.append(_value_test(v))
        elif isinstance(v, ObjectInput):
            terms.append(
                f"type({v.name}).__qualname__ == {v.qualname!r} "
                f"and type({v.name}).__module__ == {v.module!r}"
            )
    condition = " and ".join(terms) if terms else "True"
    comments = []
    for i in sig.inputs:
        comments.append(f"{i.name}: {i.describe()}")
        if isinstance(i, ObjectInput):
            comments.extend(f"  {t.name}: {t.describe()}" for t in i.tensors)
    return SignatureContext(
        index=index,
        comments=comments,
        guards=f"{guard_name} = {GUARDS}({entries})" if tensors else "",
        condition=condition,
        call=spec.call(f"{FORWARDS}[{index}]"),
    )


def _symbol_sources(tensors: Sequence[TensorInput]) -> list[tuple[str, str]]:
    """Each dynamic size and where it is first read (``input_ids.shape[0]``), in
    symbol order."""
    first: dict[str, str] = {}
    for t in tensors:
        for d, size in enumerate(t.sizes):
            if isinstance(size, str):
                first.setdefault(size, f"{t.name}.shape[{d}]")
    return [(s, first[s]) for s in sorted(first, key=symbol_order)]


def symbol_order(symbol: str) -> tuple[int, str]:
    """The order of dynamic sizes in a guard's key (n0, n1, ..., n10): the emitted
    check and the runtime's ``SizedGuards`` both sort by it."""
    digits = symbol.lstrip("n")
    return (int(digits), symbol) if digits.isdigit() else (1 << 30, symbol)


def _read(
    source: str, params: Sequence[str], reads: dict[str, SizeRead], prefix: str
) -> str:
    """The variable holding ``source``'s value (one read per source and call)."""
    if source not in reads:
        name = f"{prefix}{len(reads)}"
        while name in params:
            name = "_" + name
        reads[source] = SizeRead(name, source)
    return reads[source].name


def _checks_bounds(t: TensorInput) -> bool:
    # NOTE: [token ids out of range] (runtime/pipeline/graph_inputs.py): only
    # CPU kernels abort; on a GPU the test would be a host sync per forward.
    return t.index_bound is not None and t.device == "cpu"


def _bounds(t: TensorInput, variables: dict[str, str]) -> str:
    """The ids' bounds test; one id (a decode step of one sequence) read alone.

    NOTE: [one token id]
    ``0 <= ids.item() < bound`` costs about a third of ``__stitch_in_range__``
    (a call, the rank and size tests, ``tolist``, ``min`` and ``max``); the
    guard has checked the rank and the size already.
    """
    general = f"{IN_RANGE}({t.name}, {t.index_bound})"
    if all(isinstance(s, int) for s in t.sizes) and math.prod(t.sizes) == 1:
        # One sequence's decode step called the transformers way: ids [1, 1].
        return f"0 <= {t.name}.item() < {t.index_bound}"
    if len(t.sizes) == 1 and isinstance(t.sizes[0], str):
        count = variables[t.sizes[0]]
        return (
            f"(0 <= {t.name}.item() < {t.index_bound} if {count} == 1 else {general})"
        )
    return general


def _value_test(v: ValueInput) -> str:
    if v.value is None:
        return f"type({v.name}) is {v.type}"
    if v.type in ("NoneType", "bool"):
        return f"{v.name} is {v.value}"
    return f"type({v.name}) is {v.type} and {v.name} == {v.value}"
