"""Safetensors weights read on several threads straight into the tensors they end in.

:func:`read_index` reads each file's header (where every tensor lies);
:class:`WeightReader` allocates each tensor on the target device and fills it
on worker threads: on the CPU the file's bytes go straight into the tensor;
for a CUDA device they go into pinned staging buffers, each copied to the
device once, ``non_blocking`` (NOTE: [pinned staging for a device]).  The
reader starts at construction: whatever the caller does meanwhile (imports,
the model's build on the meta device) overlaps the read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from stitch.core.errors import StitchModelError, describe_exception

from .timeline import Timeline

# The safetensors dtype names (the format's specification) and torch's.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
# A header larger than this is not a safetensors header (the format's own bound).
MAX_HEADER = 100_000_000
# One read (and, for a device, one staging buffer and one copy): large enough
# that a read costs no more than its bytes, small enough that the threads share
# the work of a file with one large tensor.
CHUNK = 16 << 20


@dataclasses.dataclass(frozen=True)
class TensorRecord:
    """Where one tensor of a safetensors file lies: its bytes start at
    ``offset`` in ``path`` and span ``nbytes``."""

    name: str
    path: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def read_index(paths: Sequence[str]) -> dict[str, TensorRecord]:
    """Every tensor of the safetensors files ``paths``, by name, in file order;
    a file that is not safetensors, or a name in two files, is a
    :class:`StitchModelError` naming the file."""
    index: dict[str, TensorRecord] = {}
    for path in paths:
        for record in _file_records(os.fspath(path)):
            if record.name in index:
                raise StitchModelError(
                    f"{path}: tensor {record.name!r} is also in "
                    f"{index[record.name].path}"
                )
            index[record.name] = record
    return index


def _file_records(path: str) -> list[TensorRecord]:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))
            if not 0 < length <= min(MAX_HEADER, size - 8):
                raise ValueError(f"header length {length} in a file of {size} bytes")
            header = json.loads(f.read(length))
    except (OSError, ValueError) as exc:
        raise StitchModelError(
            f"{path} is not a readable safetensors file: {describe_exception(exc)}"
        ) from exc
    if not isinstance(header, dict):
        raise StitchModelError(f"{path}: its safetensors header is not an object")
    start = 8 + length
    return [
        _record(path, name, fields, start, size)
        for name, fields in header.items()
        if name != "__metadata__"
    ]


def _record(path: str, name: str, fields: Any, start: int, size: int) -> TensorRecord:
    try:
        dtype = DTYPES[fields["dtype"]]
        shape = tuple(int(d) for d in fields["shape"])
        begin, end = (int(x) for x in fields["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StitchModelError(
            f"{path}: tensor {name!r} has no readable dtype, shape and data_offsets "
            f"({describe_exception(exc)}; dtypes read: {', '.join(DTYPES)})"
        ) from exc
    nbytes = torch.Size(shape).numel() * dtype.itemsize
    if end - begin != nbytes or begin < 0 or start + end > size:
        raise StitchModelError(
            f"{path}: tensor {name!r} ({fields['dtype']} {list(shape)}, {nbytes} "
            f"bytes) lies at bytes {begin}..{end} of a data section of "
            f"{size - start} bytes"
        )
    return TensorRecord(name, path, dtype, shape, start + begin, nbytes)


def _bytes_of(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bytes as a flat uint8 view (``t`` is contiguous and owns them)."""
    return t.reshape(-1).view(torch.uint8)


class WeightReader:
    """Reads ``index`` into tensors on ``device``, on ``threads`` threads.

    Started at construction.  :meth:`tensors` waits until every tensor is
    allocated (on CUDA, after the device's context is created, on the
    reader's thread) and returns them, still being filled; :meth:`wait`
    waits until they are filled (on CUDA, copied) and returns them, or raises
    what a thread raised.  ``timeline`` records the phases: ``CUDA context``,
    ``weight read`` and ``device copy``.
    """

    def __init__(
        self,
        index: dict[str, TensorRecord],
        device: torch.device | str,
        *,
        threads: int | None = None,
        timeline: Timeline | None = None,
    ) -> None:
        self.index = index
        self.device = torch.device(device)
        self.threads = threads or min(8, os.cpu_count() or 1)
        self.timeline = timeline if timeline is not None else Timeline()
        self._tensors: dict[str, torch.Tensor] = {}
        self._allocated = threading.Event()
        self._errors: list[BaseException] = []
        self._work: Iterator[tuple[TensorRecord, int, int]] = iter(())
        self._lock = threading.Lock()
        self._runner = threading.Thread(
            target=self._run, name="stitch-weights", daemon=True
        )
        self._runner.start()

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor, allocated on the device (its bytes may still be arriving)."""
        self._allocated.wait()
        self._raise()
        return dict(self._tensors)

    def wait(self) -> dict[str, torch.Tensor]:
        """Every tensor, filled (and on a CUDA device, copied)."""
        self._runner.join()
        self._raise()
        return dict(self._tensors)

    def _raise(self) -> None:
        if self._errors:
            raise self._errors[0]

    def _run(self) -> None:
        try:
            if self.device.type == "cuda":
                with self.timeline.phase("CUDA context"):
                    torch.empty(0, device=self.device)
            for name, r in self.index.items():
                self._tensors[name] = torch.empty(
                    r.shape, dtype=r.dtype, device=self.device
                )
        except BaseException as exc:  # noqa: BLE001 - raised by tensors() and wait()
            self._errors.append(exc)
        finally:
            self._allocated.set()
        if self._errors:
            return
        self._work = self._chunks()
        workers = [
            threading.Thread(
                target=self._worker, name=f"stitch-weights-{i}", daemon=True
            )
            for i in range(self.threads)
        ]
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        ended = time.perf_counter()
        self.timeline.record("weight read", started, ended)
        if self.device.type == "cuda" and not self._errors:
            torch.cuda.synchronize(self.device)
            self.timeline.record("device copy", started, time.perf_counter())

    def _chunks(self) -> Iterator[tuple[TensorRecord, int, int]]:
        for r in self.index.values():
            for begin in range(0, r.nbytes, CHUNK):
                yield r, begin, min(CHUNK, r.nbytes - begin)

    def _next(self) -> tuple[TensorRecord, int, int] | None:
        with self._lock:
            if self._errors:
                return None
            return next(self._work, None)

    def _worker(self) -> None:
        files: dict[str, Any] = {}
        try:
            if self.device.type == "cuda":
                with torch.cuda.device(self.device):
                    self._fill_through_staging(files)
            else:
                self._fill_in_place(files)
        except BaseException as exc:  # noqa: BLE001 - raised by wait()
            with self._lock:
                self._errors.append(exc)
        finally:
            for f in files.values():
                f.close()

    def _fill_in_place(self, files: dict[str, Any]) -> None:
        while (item := self._next()) is not None:
            r, begin, n = item
            dest = _bytes_of(self._tensors[r.name])[begin : begin + n]
            _read_into(files, r, begin, dest.numpy())

    def _fill_through_staging(self, files: dict[str, Any]) -> None:
        # NOTE: [pinned staging for a device]
        # A copy from pageable memory is staged by the driver through its own
        # pinned buffer, synchronously; from pinned memory it is one DMA that
        # runs while the thread reads the next chunk.  Each thread reads into
        # two pinned buffers in turn (pinning the whole checkpoint would cost
        # more than the copy saves) and reuses one only after its copy is done.
        stages = [torch.empty(CHUNK, dtype=torch.uint8, pin_memory=True) for _ in "ab"]
        done: list[Any] = [None, None]
        turn = 0
        while (item := self._next()) is not None:
            r, begin, n = item
            if done[turn] is not None:
                done[turn].synchronize()
            stage = stages[turn][:n]
            _read_into(files, r, begin, stage.numpy())
            dest = _bytes_of(self._tensors[r.name])[begin : begin + n]
            dest.copy_(stage, non_blocking=True)
            done[turn] = torch.cuda.Event()
            done[turn].record()
            turn = 1 - turn
        for event in done:
            if event is not None:
                event.synchronize()


def _read_into(files: dict[str, Any], r: TensorRecord, begin: int, out: Any) -> None:
    """Bytes ``begin`` to ``begin + len(out)`` of ``r`` into ``out`` (a numpy
    array over the destination's memory); the read releases the GIL."""
    f = files.get(r.path)
    try:
        if f is None:
            f = files[r.path] = open(r.path, "rb", buffering=0)  # noqa: SIM115
        view = memoryview(out).cast("B")
        got = 0
        while got < len(view):
            f.seek(r.offset + begin + got)
            n = f.readinto(view[got:])
            if not n:
                raise OSError(f"the file ends at byte {r.offset + begin + got}")
            got += n
    except OSError as exc:
        raise StitchModelError(
            f"{r.path}: tensor {r.name!r} could not be read: {describe_exception(exc)}"
        ) from exc
