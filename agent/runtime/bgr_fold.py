"""Fold the BGR -> RGB channel swap into a .tflite model's first convolutions, when it loads.

OpenCV reads frames as BGR; most models take RGB, so the agent would swap the channels of every
frame, one more pass over its pixels. When every operator that reads the model's input is a
CONV_2D taking it as its data input (directly, or through a per-tensor QUANTIZE or DEQUANTIZE,
as when the first layer was kept in float), reversing the input-channel axis of those filters
gives a model that computes on BGR exactly what the original computes on RGB: each output sums
the same products (in int8, the same integers; in float, in another order). Weight scales are
per output channel and the input has one scale, so quantization is untouched.

Only that shape of graph is folded; anything else (a DEPTHWISE_CONV_2D, a per-channel input
scale, a filter computed at run time other than by one DEQUANTIZE of a constant, a filter shared
with another operator, ...) is refused with the reason, and the agent then swaps per frame as
before. The bundle's .tflite on disk is not changed: other TFLite tools still get the RGB model
the converter wrote.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from agent.bundle.manifest import ColorOrder, InputSpec
from agent.runtime.tflite_graph import (
    CONV_2D,
    DEQUANTIZE,
    OP_NAMES,
    QUANTIZE,
    TENSOR_DTYPES,
    Graph,
    GraphError,
    Subgraph,
    Tensor,
    read_graph,
)

logger = logging.getLogger(__name__)


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
    fold = _Fold(graph)
    out = bytearray(content)
    for buffer, (shape, dtype) in fold.filters.items():
        start, length = graph.buffers[buffer]
        weights = np.frombuffer(content, dtype, count=length // dtype.itemsize, offset=start)
        out[start : start + length] = weights.reshape(shape)[..., ::-1].tobytes()
    return FoldedModel(bytes(out), fold.convolutions)


class _Fold:
    """Which constant buffers to reverse: the filters of every convolution that reads the input's
    channels, directly or through per-tensor QUANTIZE / DEQUANTIZE (a layer kept in float, say),
    with a filter stored in the model or dequantized from one (float16 weights). Raises
    FoldRefused for anything else."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        main, image = self._main_and_input()
        self.main = main
        self.filters: dict[int, tuple[tuple[int, ...], np.dtype]] = {}  # buffer -> shape, dtype
        self.convolutions = 0
        # Tensors this fold owns, with the operators (by position) allowed to read each.
        self._owned: dict[int, set[int]] = {}
        carriers, pending = {image.index}, [image.index]
        while pending:
            t = pending.pop()
            for pos, op in enumerate(main.operators):
                if t not in op.inputs:
                    continue
                if (
                    op.opcode in (QUANTIZE, DEQUANTIZE)
                    and len(op.inputs) == 1
                    and len(op.outputs) == 1
                ):
                    out = main.tensors[op.outputs[0]]
                    if out.quant_scales > 1 or out.index in main.outputs:
                        raise FoldRefused(
                            "the input's channels reach an output or a per-channel scale"
                        )
                    if out.index not in carriers:
                        carriers.add(out.index)
                        pending.append(out.index)
                    continue
                if op.opcode != CONV_2D or op.inputs[0] != t or carriers & set(op.inputs[1:]):
                    name = OP_NAMES.get(op.opcode, f"operator {op.opcode}")
                    raise FoldRefused(f"the input is read by {name}, not only by convolutions")
                if len(op.inputs) < 2 or op.inputs[1] < 0:
                    raise FoldRefused("a first convolution has no filter")
                self._filter(op.inputs[1], pos)
                self.convolutions += 1
        self._check_sharing()

    def _main_and_input(self) -> tuple[Subgraph, Tensor]:
        if not self.graph.subgraphs:
            raise FoldRefused("the model has no subgraph")
        main = self.graph.subgraphs[0]
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
        return main, image

    def _filter(self, index: int, reader: int) -> None:
        """Own a convolution's filter: a stored constant, or one DEQUANTIZE of a stored constant."""
        f = self.main.tensors[index]
        self._owned.setdefault(index, set()).add(reader)
        if self._stored(f):
            return
        producers = [p for p, op in enumerate(self.main.operators) if index in op.outputs]
        if len(producers) == 1:
            op = self.main.operators[producers[0]]
            if op.opcode == DEQUANTIZE and len(op.inputs) == 1 and op.inputs[0] >= 0:
                const = self.main.tensors[op.inputs[0]]
                if const.shape == f.shape and self._stored(const):
                    self._owned.setdefault(const.index, set()).add(producers[0])
                    return
        raise FoldRefused("a first convolution's filter is not a constant stored in the model")

    def _stored(self, t: Tensor) -> bool:
        """Whether t is an [O, H, W, 3] constant in the file; if so, its buffer is to be reversed."""
        if len(t.shape) != 4 or t.shape[-1] != 3:
            raise FoldRefused(f"a first convolution's filter is {list(t.shape)}, not [O, H, W, 3]")
        dtype = TENSOR_DTYPES.get(t.type)
        if dtype is None or t.sparse:
            raise FoldRefused("a first convolution's filter is packed or sparse")
        if t.quant_scales > 1 and t.quant_axis != 0:
            raise FoldRefused("a first convolution's filter is quantized along its input channels")
        length = self.graph.buffers[t.buffer][1]
        if length == 0:
            return False
        if length != int(np.prod(t.shape)) * dtype.itemsize:
            raise FoldRefused("a first convolution's filter does not fill its buffer")
        self.filters[t.buffer] = (t.shape, dtype)
        return True

    def _check_sharing(self) -> None:
        """Reordering a buffer changes every tensor stored in it, and a tensor every operator
        reading it: each must be one this fold owns, read only where the fold expects."""
        main = self.main
        for pos, op in enumerate(main.operators):
            for t in op.inputs:
                if t in self._owned and pos not in self._owned[t]:
                    raise FoldRefused(
                        "a first convolution's filter is shared with another operator"
                    )
        for sub in self.graph.subgraphs:
            for tensor in sub.tensors:
                if tensor.buffer in self.filters and (
                    sub is not main or tensor.index not in self._owned
                ):
                    raise FoldRefused("a first convolution's filter is shared with another tensor")
        if self._owned.keys() & set(main.outputs):
            raise FoldRefused("a first convolution's filter is also an output")


def bgr_input(spec: InputSpec) -> InputSpec:
    """The input spec of the folded model: BGR, with per-channel mean and std reversed."""
    return spec.model_copy(
        update={"color_order": ColorOrder.BGR, "mean": spec.mean[::-1], "std": spec.std[::-1]}
    )
