"""Fold the BGR -> RGB channel swap into a .tflite model's first convolutions, when it loads.

OpenCV reads frames as BGR; most models take RGB, so the agent would swap the channels of every
frame, one more pass over its pixels. When every operator that reads the model's input is a
CONV_2D taking it as its data input, reversing the input-channel axis of those filters gives a
model that computes on BGR exactly what the original computes on RGB: each output sums the same
products (in int8, the same integers; in float, in another order). Weight scales are per output
channel and the input has one scale, so quantization is untouched.

Only that shape of graph is folded; anything else (a DEPTHWISE_CONV_2D, a per-channel input
scale, a filter computed at run time or shared with another tensor, ...) is refused with the
reason, and the agent then swaps per frame as before. The bundle's .tflite on disk is not
changed: other TFLite tools still get the RGB model the converter wrote.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from agent.manifest import ColorOrder, InputSpec
from agent.tflite_graph import CONV_2D, TENSOR_DTYPES, Graph, GraphError, read_graph

logger = logging.getLogger(__name__)

_OP_NAMES = {
    0: "ADD",
    1: "AVERAGE_POOL_2D",
    2: "CONCATENATION",
    3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE",
    9: "FULLY_CONNECTED",
    17: "MAX_POOL_2D",
    18: "MUL",
    22: "RESHAPE",
    32: "CUSTOM",
    34: "PAD",
    41: "SUB",
    114: "QUANTIZE",
}


class FoldRefused(ValueError):
    """The model's input cannot be given BGR by reordering filter weights; the reason says why."""


@dataclass(frozen=True)
class FoldedModel:
    content: bytes  # the model, taking BGR
    convolutions: int  # how many CONV_2D operators read the input


def fold_bgr(content: bytes) -> FoldedModel:
    """A copy of the model that takes BGR where the original takes RGB. Raises FoldRefused."""
    try:
        graph = read_graph(content)
    except GraphError as exc:
        raise FoldRefused(f"the model could not be read: {exc}") from exc
    filters, convolutions = _input_filters(graph)
    out = bytearray(content)
    for buffer, (shape, dtype) in filters.items():
        start, length = graph.buffers[buffer]
        weights = np.frombuffer(content, dtype, count=length // dtype.itemsize, offset=start)
        out[start : start + length] = weights.reshape(shape)[..., ::-1].tobytes()
    return FoldedModel(bytes(out), convolutions)


def _input_filters(graph: Graph) -> tuple[dict[int, tuple[tuple[int, ...], np.dtype]], int]:
    """Buffer index -> (filter shape, dtype) of every filter that reads the input's channels, and
    how many convolutions read the input. Raises FoldRefused."""
    if not graph.subgraphs:
        raise FoldRefused("the model has no subgraph")
    main = graph.subgraphs[0]
    if len(main.inputs) != 1:
        raise FoldRefused(f"the model has {len(main.inputs)} inputs")
    if main.inputs[0] < 0:
        raise FoldRefused("the model's input is not a tensor")
    image = main.tensors[main.inputs[0]]
    if len(image.shape) != 4 or image.shape[-1] != 3:
        raise FoldRefused(f"the input is {list(image.shape)}, not [1, H, W, 3]")
    if image.quant_scales > 1:
        raise FoldRefused("the input is quantized per channel")
    if image.index in main.outputs:
        raise FoldRefused("the input is also an output")
    readers = [op for op in main.operators if image.index in op.inputs]
    if not readers:
        raise FoldRefused("no operator reads the input")
    filters: dict[int, tuple[tuple[int, ...], np.dtype]] = {}
    for op in readers:
        if op.opcode != CONV_2D or op.inputs[0] != image.index or image.index in op.inputs[1:]:
            name = _OP_NAMES.get(op.opcode, f"operator {op.opcode}")
            raise FoldRefused(f"the input is read by {name}, not only by convolutions")
        if len(op.inputs) < 2 or op.inputs[1] < 0:
            raise FoldRefused("a first convolution has no filter")
        f = main.tensors[op.inputs[1]]
        dtype = TENSOR_DTYPES.get(f.type)
        if len(f.shape) != 4 or f.shape[-1] != 3:
            raise FoldRefused(f"a first convolution's filter is {list(f.shape)}, not [O, H, W, 3]")
        if dtype is None or f.sparse:
            raise FoldRefused("a first convolution's filter is packed or sparse")
        if f.quant_scales > 1 and f.quant_axis != 0:
            raise FoldRefused("a first convolution's filter is quantized along its input channels")
        length = graph.buffers[f.buffer][1]
        if length != int(np.prod(f.shape)) * dtype.itemsize:
            raise FoldRefused("a first convolution's filter is not a constant stored in the model")
        filters[f.buffer] = (f.shape, dtype)
    # Reordering a buffer changes every tensor stored in it, and a tensor every operator reading it.
    mine = {op.inputs[1] for op in readers}
    other_reads = {t for op in main.operators if op not in readers for t in op.inputs}
    for sub in graph.subgraphs:
        for t in sub.tensors:
            if t.buffer not in filters:
                continue
            if sub is not main or t.index not in mine or t.index in other_reads or t.index in main.outputs:
                raise FoldRefused("a first convolution's filter is shared with another operator")
    return filters, len(readers)


def bgr_input(spec: InputSpec) -> InputSpec:
    """The input spec of the folded model: BGR, with per-channel mean and std reversed."""
    return spec.model_copy(
        update={"color_order": ColorOrder.BGR, "mean": spec.mean[::-1], "std": spec.std[::-1]}
    )
