"""Save an ONNX model whose initializers are held apart, one tensor at a time, without a whole-model copy.

`onnx.save_model` needs the initializers inside the ModelProto (a copy of every tensor: `make_graph` and
`make_model` each copy once more) and then serializes the whole model to one bytes object: four copies of the
weights at the peak, 2.5 GB of a SmolLM2 export's 4.1 GB build peak. Protobuf's wire format lets the graph's
repeated `initializer` field (5) follow the rest of the graph, and the graph field (7) follow the rest of the model,
so the file is written as: model without graph, graph header, graph without initializers, then each initializer as
it is serialized and dropped. The file parses to the same ModelProto `onnx.save_model` would have written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

if TYPE_CHECKING:
    import mmap

    from onnx import ModelProto, TensorProto

GRAPH_FIELD_TAG = b"\x3a"  # ModelProto.graph = 7, length-delimited: (7 << 3) | 2
INITIALIZER_FIELD_TAG = b"\x2a"  # GraphProto.initializer = 5, length-delimited: (5 << 3) | 2
RAW_DATA_TAG = b"\x4a"  # TensorProto.raw_data = 9, length-delimited: (9 << 3) | 2


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class RawTensor:
    """An initializer serialized straight from its array's buffer: the bytes `numpy_helper.from_array(...)
    .SerializeToString()` gives, without the two whole copies of the data on the way (tobytes, the TensorProto)."""

    def __init__(self, name: str, array: np.ndarray) -> None:
        from onnx import TensorProto, helper

        self.name = name
        self.array = np.ascontiguousarray(array)
        head = TensorProto(name=name, dims=self.array.shape,
                           data_type=helper.np_dtype_to_tensor_dtype(self.array.dtype))
        self.head = head.SerializeToString()  # dims, data_type, name: fields 1, 2, 8, before raw_data (9)

    def ByteSize(self) -> int:  # TensorProto's method names: the two are used alike
        n = self.array.nbytes
        return len(self.head) + len(RAW_DATA_TAG) + len(varint(n)) + n

    def SerializeToString(self) -> bytes:
        data = memoryview(self.array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        return b"".join((self.head, RAW_DATA_TAG, varint(len(data)), data))

    def proto(self) -> TensorProto:
        from onnx import TensorProto

        tensor = TensorProto()
        tensor.ParseFromString(self.SerializeToString())
        return tensor


class Spool:
    """Initializers serialized to a temporary file as a writer makes them, so it holds a layer's tensors at a time."""

    def __init__(self, folder: Path) -> None:
        self.file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - closed by save() / read_all()
        self.sizes: list[int] = []

    def take(self, inits: list[TensorProto | RawTensor]) -> None:
        """Serialize every tensor of `inits` to the spool and empty the list (the tensors are freed)."""
        inits.reverse()
        while inits:
            data = inits.pop().SerializeToString()
            self.file.write(data)
            self.sizes.append(len(data))

    @property
    def nbytes(self) -> int:
        return sum(self.sizes)

    def chunks(self) -> Iterator[bytes]:
        """Each spooled tensor's serialized bytes, in the order taken; closes the spool at the end."""
        self.file.seek(0)
        for size in self.sizes:
            yield self.file.read(size)
        self.file.close()

    def read_all(self) -> list[TensorProto]:
        from onnx import TensorProto

        out = []
        for data in self.chunks():
            tensor = TensorProto()
            tensor.ParseFromString(data)
            out.append(tensor)
        return out


def save(model: ModelProto, inits: list[TensorProto | RawTensor], path: Path, spool: Spool | None = None) -> int:
    """Write `model` (its graph without initializers) plus the `spool`'s tensors and then `inits` to `path`; `inits`
    is emptied as it goes, so each tensor is freed once written (hold no other reference to keep memory flat).
    Returns the bytes written."""
    from onnx import ModelProto

    head = ModelProto()
    head.CopyFrom(model)  # small: the graph holds no initializers yet
    head.ClearField("graph")
    graph = model.graph.SerializeToString()
    sizes = (spool.sizes if spool else []) + [t.ByteSize() for t in inits]
    graph_len = len(graph) + sum(len(INITIALIZER_FIELD_TAG) + len(varint(s)) + s for s in sizes)
    written = 0
    with open(path, "wb") as f:
        for chunk in (head.SerializeToString(), GRAPH_FIELD_TAG + varint(graph_len), graph):
            written += f.write(chunk)
        for data in spool.chunks() if spool else ():
            written += _write_initializer(f, data)
        inits.reverse()  # pop() from the end is O(1); reversed once so the file keeps the writer's order
        while inits:
            written += _write_initializer(f, inits.pop().SerializeToString())  # the tensor is freed here
    return written


def _write_initializer(f: BinaryIO, data: bytes) -> int:
    """One serialized TensorProto as a GraphProto.initializer field."""
    return f.write(INITIALIZER_FIELD_TAG + varint(len(data))) + f.write(data)


def load_model(path: Path) -> ModelProto:
    """onnx.load without its whole-file copy: the rest of the model first, then each initializer parsed from its own
    bytes (onnx.load holds the file's bytes and the parsed model at once: twice the weights, 1.3 GB for a SmolLM2
    export). External data is loaded as onnx.load does."""
    from onnx import external_data_helper

    model, places = _parse_outside(path, keep_initializers=False)
    with open(path, "rb") as f:
        for start, end in places:  # read, not mapped: mapped file pages would count in this process's RSS
            model.graph.initializer.add().ParseFromString(os.pread(f.fileno(), end - start, start))
    if any(t.data_location == 1 for t in model.graph.initializer):  # TensorProto.EXTERNAL
        external_data_helper.load_external_data_for_model(model, str(Path(path).parent))
    return model


def load_skeleton(path: Path) -> ModelProto:
    """The model at `path` with its initializers' data left out (their names, types and shapes kept), for reading
    its structure, never for running or saving it. The data's bytes are skipped, never read: onnx.load parses every
    inline weight even with load_external_data=False (655 MB for a SmolLM2 export)."""
    return _parse_outside(path, keep_initializers=True)[0]


def _parse_outside(path: Path, *, keep_initializers: bool) -> tuple[ModelProto, list[tuple[int, int]]]:
    """The model without its graph's initializer data (without its initializers, unless `keep_initializers`: then
    with their names, types and shapes), and where each initializer's bytes lie in the file."""
    import mmap

    from onnx import ModelProto

    head, graph, places = bytearray(), bytearray(), []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for number, start, body, end in _fields(mm, 0, len(mm)):
            if number != GRAPH_FIELD:
                head += mm[start:end]
                continue
            for inner, g_start, g_body, g_end in _fields(mm, body, end):  # repeated fields merge, as protobuf's do
                if inner == INITIALIZER_FIELD:
                    places.append((g_body, g_end))
                    if keep_initializers:
                        tensor = b"".join(mm[t_start:t_end] for field, t_start, _, t_end in _fields(mm, g_body, g_end)
                                          if field not in TENSOR_DATA_FIELDS)
                        graph += INITIALIZER_FIELD_TAG + varint(len(tensor)) + tensor
                elif inner != SPARSE_INITIALIZER_FIELD:
                    graph += mm[g_start:g_end]
    model = ModelProto()
    model.ParseFromString(bytes(head))
    model.graph.ParseFromString(bytes(graph))
    return model, places


GRAPH_FIELD, INITIALIZER_FIELD, SPARSE_INITIALIZER_FIELD = 7, 5, 15
# TensorProto's float_data, int32_data, string_data, int64_data, raw_data, double_data, uint64_data
TENSOR_DATA_FIELDS = frozenset({4, 5, 6, 7, 9, 10, 11})


def _fields(buf: mmap.mmap, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, start of its tag, start of its value, end) of each field of the message in buf[pos:end]."""
    while pos < end:
        start = pos
        key, pos = _read_varint(buf, pos)
        wire = key & 7
        if wire == 0:
            _, body_end = _read_varint(buf, pos)
            body = pos
        elif wire == 2:
            size, body = _read_varint(buf, pos)
            body_end = body + size
        elif wire in (1, 5):
            body, body_end = pos, pos + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {start}")
        if body_end > end:
            raise ValueError(f"truncated protobuf field at byte {start}")
        yield key >> 3, start, body, body_end
        pos = body_end


def _read_varint(buf: mmap.mmap, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or malformed protobuf varint")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
