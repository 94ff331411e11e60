"""Save an ONNX model whose initializers are held apart, one tensor at a time, without a whole-model copy.

`onnx.save_model` needs the initializers inside the ModelProto (a copy of every tensor: `make_graph` and
`make_model` each copy once more) and then serializes the whole model to one bytes object: four copies of the
weights at the peak, 2.5 GB of a SmolLM2 export's 4.1 GB build peak. Protobuf's wire format lets the graph's
repeated `initializer` field (5) follow the rest of the graph, and the graph field (7) follow the rest of the model,
so the file is written as: model without graph, graph header, graph without initializers, then each initializer as
it is serialized and dropped. The file parses to the same ModelProto `onnx.save_model` would have written.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from onnx import ModelProto, TensorProto

GRAPH_FIELD_TAG = b"\x3a"  # ModelProto.graph = 7, length-delimited: (7 << 3) | 2
INITIALIZER_FIELD_TAG = b"\x2a"  # GraphProto.initializer = 5, length-delimited: (5 << 3) | 2


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Spool:
    """Initializers serialized to a temporary file as a writer makes them, so it holds a layer's tensors at a time."""

    def __init__(self, folder: Path) -> None:
        self.file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - closed by save() / read_all()
        self.sizes: list[int] = []

    def take(self, inits: list[TensorProto]) -> None:
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


def save(model: ModelProto, inits: list[TensorProto], path: Path, spool: Spool | None = None) -> int:
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
