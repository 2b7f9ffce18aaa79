"""Pieces across a process boundary: ``torch.fx._graph_pickler`` with one fix.

A spawned compile worker (``pipeline/tiered/spawned_workers.py``) receives each piece
as its GraphModule and fake example inputs, pickled with torch's
``GraphPickler``: graphs with their node metadata, fake tensors by their
metadata, the ShapeEnv with its symbols, guards and ranges, SymInts, and ops
by name.  The other side gets one fresh ``FakeTensorMode`` over the unpickled
ShapeEnv, so symbols keep their names and a guard a compile adds there reads
as it would here.

NOTE: [a view's base in a pickled fake tensor]
``GraphPickler`` clears the fake mode of a fake tensor's description but not
of its base's: a fake tensor that is a view (a piece input that is a slice of
another tensor, a node's example value made by ``view``) carries its base's
``FakeTensorMode``, with its converter's weak dictionaries, into the pickle,
which fails ("Can't pickle local object 'WeakValueDictionary...'", torch 2.11
to 2.15).  The unpickler already restores the base's fake mode; so the
pickler below clears it as it clears the tensor's own.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any


@functools.cache
def _pickler() -> Any:
    """The pickler, and ``_TensorPickleData`` without the base's fake mode
    (NOTE above) as this module's ``_FakeTensorData``, which the pickle names;
    made on first use, since their module imports sympy."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch.fx import _graph_pickler as gp

    class _FakeTensorData(gp._TensorPickleData):
        def __init__(self, describer: Any, t: Any) -> None:
            super().__init__(describer, t)
            base = self.metadata.base
            if base is not None and base.fake_mode is not None:
                self.metadata = dataclasses.replace(
                    self.metadata, base=dataclasses.replace(base, fake_mode=None)
                )

    _FakeTensorData.__module__ = __name__
    _FakeTensorData.__qualname__ = "_FakeTensorData"
    globals()["_FakeTensorData"] = _FakeTensorData

    class _PiecePickler(gp.GraphPickler):
        def reducer_override(self, obj: object) -> Any:
            if isinstance(obj, FakeTensor):
                return _FakeTensorData.reduce_helper(self, obj)
            return super().reducer_override(obj)

    return _PiecePickler


def __getattr__(name: str) -> Any:
    # A process that loads a pickle before it has made one.
    if name == "_FakeTensorData":
        _pickler()
        return globals()[name]
    raise AttributeError(name)


# NOTE: [the node metadata a spawned compile needs]
# Only what a compile reads of a node crosses: its fake value, Dynamo's tensor
# attributes (static inputs), unbacked bindings and the stack trace for error
# messages.  The rest holds objects of this process: Dynamo's ``grapharg``
# holds a weak reference to the real tensor, a parameter's weights (torch
# 2.11's pickler refuses it, 2.13's would pickle the weights), and the module
# stacks hold module classes.
NODE_METADATA = frozenset(
    {"val", "example_value", "tensor_dict", "unbacked_bindings", "stack_trace"}
)


def dumps(obj: object) -> bytes:
    """``obj`` (graphs, fake tensors, SymInts, plain values) as bytes.  Every op
    is allowed; one that the loading process cannot import fails there, naming
    it.  Nodes keep the metadata in :data:`NODE_METADATA`."""
    from torch.fx import _graph_pickler as gp

    options = gp.Options(
        ops_filter=None, node_metadata_key_filter=NODE_METADATA.__contains__
    )
    return _pickler().dumps(obj, options)


def loads(data: bytes) -> tuple[object, Any]:
    """What :func:`dumps` pickled, and the fresh fake mode its fake tensors and
    symbols now belong to (its ShapeEnv is the pickled one)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx import _graph_pickler as gp
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    fake_mode = FakeTensorMode(shape_env=ShapeEnv())
    return gp.GraphPickler.loads(data, fake_mode), fake_mode
