"""A read-only view of a .tflite file's graph: just enough of the flatbuffer to follow the input.

The agent must not need TensorFlow, and tflite-runtime ships no schema module, so this reads the
few tables it needs (model, subgraph, tensor, operator, operator code, buffer) straight from the
flatbuffer wire format. Every offset is checked against the file before it is followed, and any
inconsistency raises GraphError: the bytes come from a bundle, which may be corrupt.

Field numbers follow the TFLite schema (schema.fbs); only the fields named below are read.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

IDENTIFIER = b"TFL3"

# BuiltinOperator values used here (schema.fbs), and the names of those likely to read an input.
CONV_2D = 3
DEQUANTIZE = 6
QUANTIZE = 114
OP_NAMES = {
    0: "ADD",
    1: "AVERAGE_POOL_2D",
    2: "CONCATENATION",
    CONV_2D: "CONV_2D",
    4: "DEPTHWISE_CONV_2D",
    DEQUANTIZE: "DEQUANTIZE",
    9: "FULLY_CONNECTED",
    17: "MAX_POOL_2D",
    18: "MUL",
    22: "RESHAPE",
    32: "CUSTOM",
    34: "PAD",
    41: "SUB",
    QUANTIZE: "QUANTIZE",
}

# TensorType -> numpy dtype, for the element types whose bytes can be reordered as arrays.
TENSOR_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),  # FLOAT32
    1: np.dtype("<f2"),  # FLOAT16
    2: np.dtype("<i4"),  # INT32
    3: np.dtype("u1"),  # UINT8
    4: np.dtype("<i8"),  # INT64
    7: np.dtype("<i2"),  # INT16
    9: np.dtype("i1"),  # INT8
    10: np.dtype("<f8"),  # FLOAT64
}

# Bounds on what a plausible model holds, checked before any list is built.
MAX_ITEMS = 1 << 20


class GraphError(ValueError):
    """The bytes are not a TFLite model this reader can follow."""


class _Reader:
    """Bounds-checked access to flatbuffer tables, vectors and scalars in one byte string."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _check(self, pos: int, size: int) -> None:
        if pos < 0 or pos + size > len(self.data):
            raise GraphError(f"offset {pos} (+{size}) is outside the {len(self.data)}-byte model")

    def scalar(self, fmt: str, pos: int) -> int:
        self._check(pos, struct.calcsize(fmt))
        value: int = struct.unpack_from(fmt, self.data, pos)[0]
        return value

    def follow(self, pos: int) -> int:
        """The position a uoffset at `pos` points to."""
        return pos + self.scalar("<I", pos)

    def field(self, table: int, number: int) -> int | None:
        """The position of field `number` in the table at `table`, or None when it is absent."""
        vtable = table - self.scalar("<i", table)
        vtable_size = self.scalar("<H", vtable)
        entry = 4 + 2 * number
        if entry + 2 > vtable_size:
            return None
        offset = self.scalar("<H", vtable + entry)
        return table + offset if offset else None

    def field_scalar(self, table: int, number: int, fmt: str, default: int = 0) -> int:
        pos = self.field(table, number)
        return default if pos is None else self.scalar(fmt, pos)

    def vector(self, table: int, number: int, item_size: int) -> tuple[int, int]:
        """(position of the first item, count) of a vector field; (0, 0) when absent."""
        pos = self.field(table, number)
        if pos is None:
            return 0, 0
        start = self.follow(pos)
        count = self.scalar("<I", start)
        if count > MAX_ITEMS:
            raise GraphError(f"a vector of {count} items is more than a model holds")
        self._check(start + 4, count * item_size)
        return start + 4, count

    def tables(self, table: int, number: int) -> list[int]:
        first, count = self.vector(table, number, 4)
        return [self.follow(first + 4 * i) for i in range(count)]

    def ints(self, table: int, number: int, fmt: str = "<i") -> list[int]:
        size = struct.calcsize(fmt)
        first, count = self.vector(table, number, size)
        return [self.scalar(fmt, first + size * i) for i in range(count)]


@dataclass(frozen=True)
class Tensor:
    index: int
    shape: tuple[int, ...]
    type: int  # TensorType
    buffer: int
    quant_scales: int  # how many quantization scales (more than one: per-channel)
    quant_axis: int
    sparse: bool


@dataclass(frozen=True)
class Operator:
    opcode: int  # BuiltinOperator (custom ops: 32)
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Subgraph:
    tensors: tuple[Tensor, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: tuple[Operator, ...]


@dataclass(frozen=True)
class Graph:
    subgraphs: tuple[Subgraph, ...]
    buffers: tuple[tuple[int, int], ...]  # (position of the data in the file, byte length)


def read_graph(data: bytes) -> Graph:
    """The model's subgraphs and buffer locations. Raises GraphError on anything unreadable."""
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        raise GraphError("not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        return _read(_Reader(data))
    except struct.error as exc:  # a bound check missed: still the model's fault, not ours
        raise GraphError(f"unreadable model: {exc}") from exc


def _read(r: _Reader) -> Graph:
    model = r.follow(0)
    opcodes = [_builtin_code(r, t) for t in r.tables(model, 1)]
    buffers = []
    for b in r.tables(model, 4):
        first, count = r.vector(b, 0, 1)
        buffers.append((first, count))
    subgraphs = []
    for sg in r.tables(model, 2):
        tensors = tuple(_tensor(r, i, t) for i, t in enumerate(r.tables(sg, 0)))
        operators = []
        for op in r.tables(sg, 3):
            index = r.field_scalar(op, 0, "<I")
            if index >= len(opcodes):
                raise GraphError(f"operator code {index} of {len(opcodes)}")
            operators.append(Operator(opcodes[index], tuple(r.ints(op, 1)), tuple(r.ints(op, 2))))
        sub = Subgraph(tensors, tuple(r.ints(sg, 1)), tuple(r.ints(sg, 2)), tuple(operators))
        named = (
            *sub.inputs,
            *sub.outputs,
            *(i for o in operators for i in (*o.inputs, *o.outputs)),
        )
        for n in named:
            if not -1 <= n < len(tensors):  # -1 marks an optional input that is absent
                raise GraphError(f"tensor {n} of {len(tensors)}")
        subgraphs.append(sub)
    for s in subgraphs:
        for t in s.tensors:
            if t.buffer >= len(buffers):
                raise GraphError(f"tensor {t.index} names buffer {t.buffer} of {len(buffers)}")
    return Graph(tuple(subgraphs), tuple(buffers))


def _builtin_code(r: _Reader, table: int) -> int:
    """schema.fbs keeps the code in a byte field (deprecated_builtin_code, field 0) for old
    readers and an int field (builtin_code, field 3) for codes past 127: the larger one holds."""
    return max(r.field_scalar(table, 0, "<b"), r.field_scalar(table, 3, "<i"))


def _tensor(r: _Reader, index: int, table: int) -> Tensor:
    quant = r.field(table, 4)
    scales, axis = 0, 0
    if quant is not None:
        q = r.follow(quant)
        scales = r.vector(q, 2, 4)[1]
        axis = r.field_scalar(q, 6, "<i")
    return Tensor(
        index=index,
        shape=tuple(r.ints(table, 0)),
        type=r.field_scalar(table, 1, "<b"),
        buffer=r.field_scalar(table, 2, "<I"),
        quant_scales=scales,
        quant_axis=axis,
        sparse=r.field(table, 6) is not None,
    )
