"""Bias correction: taking out the mean shift that int8 weights cause in each layer's output.

Rounding a layer's weights to int8 (per output channel, symmetric, as TFLite does) changes each
output channel's mean over the data, not only its noise: with few weights per channel (a 3x3
depthwise filter has 9) the rounding errors do not average out, and the shift passes on through
every later layer. Here each convolution, depthwise, separable and dense layer, in the order the
model runs them, has its weights replaced by their int8 values in a working copy whose earlier
layers are already quantized and corrected (so the shift measured includes what came from above);
its output's mean per channel on the calibration data is compared with the float model's, and the
difference is taken out of the layer's bias or, for a layer without one that only a batch
normalization reads, added to that normalization's moving mean. The float weights then go back:
the model differs from the original only in those biases, and TFLite quantizes its weights to the
same int8 values. Shared layers and layers whose output cannot be corrected are left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converter.console import progress
from converter.loading import copy_model
from converter.pruning.graph import GraphNode, Kind
from converter.pruning.trace import build_graph

logger = logging.getLogger(__name__)

SAMPLES = 64  # calibration samples each layer's output mean is measured on
BATCH = 16
LAYERS = (Kind.CONV, Kind.DEPTHWISE, Kind.SEPARABLE, Kind.DENSE)


@dataclass
class BiasReport:
    """The layers corrected and the largest shift taken out of each, relative to the spread of
    that layer's output (shift over standard deviation, largest over channels)."""

    layers: list[str] = field(default_factory=list)
    shifts: list[float] = field(default_factory=list)

    def record(self) -> dict[str, object]:
        return {
            "layers": len(self.layers),
            "median_shift": round(float(np.median(self.shifts)), 4) if self.shifts else 0.0,
            "max_shift": round(float(max(self.shifts)), 4) if self.shifts else 0.0,
        }


def int8_weights(w: np.ndarray, depthwise: bool = False) -> np.ndarray:
    """w rounded to symmetric int8 per output channel (the last axis; a depthwise kernel's last
    two, [..., in, multiplier]) and back to float."""
    flat = w.reshape(*w.shape[:-2], -1) if depthwise else w
    top = np.abs(flat).reshape(-1, flat.shape[-1]).max(0)
    scale = np.where(top > 0, top / 127.0, 1.0)
    q = np.clip(np.sign(flat) * np.floor(np.abs(flat) / scale + 0.5), -127, 127) * scale
    return q.reshape(w.shape).astype(w.dtype)


def _kernels(node: GraphNode) -> list[tuple[Any, bool]]:
    """The node's weight variables, each with whether it is a depthwise kernel."""
    op = node.op
    if node.kind is Kind.SEPARABLE:
        return [(op.depthwise_kernel, True), (op.pointwise_kernel, False)]
    return [(op.kernel, node.kind is Kind.DEPTHWISE)]


def _target(node: GraphNode, readers: dict[str, list[GraphNode]]) -> tuple[Any, float] | None:
    """Where the node's output shift is corrected: its bias (sign -1) or the moving mean of the
    one batch normalization that reads it (sign +1)."""
    bias = getattr(node.op, "bias", None)
    if bias is not None:
        return bias, -1.0
    after = readers.get(node.outputs[0], [])
    if len(after) == 1 and after[0].kind is Kind.BN:
        return after[0].op.moving_mean, 1.0
    return None


def _means(model: Any, tensors: list[Any], x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and standard deviation of each tensor over the samples and positions."""
    import keras

    probe = keras.Model(model.inputs[0], tensors)
    sums = [np.zeros(t.shape[-1]) for t in tensors]
    squares = [np.zeros(t.shape[-1]) for t in tensors]
    counts = [0] * len(tensors)
    for start in range(0, len(x), BATCH):
        got = probe(x[start : start + BATCH], training=False)
        for i, t in enumerate(got if isinstance(got, (list, tuple)) else [got]):
            flat = np.asarray(t, np.float64).reshape(-1, t.shape[-1])
            sums[i] += flat.sum(0)
            squares[i] += (flat**2).sum(0)
            counts[i] += flat.shape[0]
    out = []
    for s, q, n in zip(sums, squares, counts, strict=True):
        mean = s / n
        out.append((mean, np.sqrt(np.maximum(q / n - mean**2, 0.0))))
    return out


def correct_biases(model: Any, x: np.ndarray, samples: int = SAMPLES) -> tuple[Any, BiasReport]:
    """A copy of `model` with each layer's int8 weight shift taken out of its bias (see the
    module's docstring), and what was done; the model itself when no layer qualifies."""
    copy = copy_model(model)
    g = build_graph(copy)
    readers, calls = g.readers(), g.calls()
    todo = []
    for n in g.nodes:
        linear = getattr(getattr(n.op, "activation", None), "__name__", "linear") == "linear"
        if n.kind in LAYERS and calls[n.layer_id] == 1 and len(n.outputs) == 1 and linear:
            target = _target(n, readers)
            if target is not None:
                todo.append((n, target))
    report = BiasReport()
    if not todo:
        return model, report
    x = x[:samples]
    reference = _means(copy, [n.knode.outputs[0] for n, _ in todo], x)
    floats = [[np.asarray(v) for v, _ in _kernels(n)] for n, _ in todo]
    with progress() as bar:
        task = bar.add_task("bias correction", total=len(todo))
        for (node, (var, sign)), (mean, std) in zip(todo, reference, strict=True):
            for v, depthwise in _kernels(node):
                v.assign(int8_weights(np.asarray(v), depthwise))
            ((got, _),) = _means(copy, [node.knode.outputs[0]], x)
            shift = got - mean
            var.assign(np.asarray(var) + sign * shift.astype(np.asarray(var).dtype))
            report.layers.append(node.name)
            report.shifts.append(float(np.max(np.abs(shift) / np.maximum(std, 1e-12))))
            bar.advance(task)
    for (node, _), kept in zip(todo, floats, strict=True):
        for (v, _), w in zip(_kernels(node), kept, strict=True):
            v.assign(w)
    logger.info("bias corrected in %d layer(s)", len(report.layers))
    return copy, report
