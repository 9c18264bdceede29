"""Cross-layer equalization: per-channel rescaling that evens out an int8 tensor's channel ranges.

An int8 activation tensor has one scale for all its channels, so a channel whose values span a
hundredth of the widest one's gets a hundredth of the levels. Where a tensor runs from the layer
that makes it to the layer that reads it through nothing but positively homogeneous steps
(f(x / s) = f(x) / s for s > 0: batch normalization's scaled output, ReLU, leaky ReLU, max and
average pooling, zero padding), dividing channel c by s_c where it is made and multiplying the
reader's weights for input channel c by s_c computes exactly the same model in float. Two kinds of
tensor qualify:

- inside a `SeparableConv2D`, the depthwise output that the pointwise convolution reads (no
  activation between them): the depthwise kernel's channel c is divided by s_c;
- a convolution's (or dense, depthwise or separable layer's) output, through an optional batch
  normalization and such steps, read only by one convolution, depthwise, separable or dense layer.

The weights are quantized per output channel, so the producer's side costs nothing. A reader that
keeps channels apart (depthwise) also costs nothing, and the tensor's channels are made equal: s_c
is the channel's range over the widest. A reader that mixes channels has its input channel c's
weights multiplied by s_c, so the choice balances the two (s_c = sqrt(r_c / w_c), with r_c the
channel's range on the calibration data over the widest and w_c the largest share input channel c
has of any output channel's largest weight), as in Nagel et al.'s data-free quantization. ReLU6
(its clip is not homogeneous) and tensors with more than one reader (residual adds) are left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converter.loading import copy_model
from converter.pruning.graph import ChannelGraph, GraphNode, Kind
from converter.pruning.trace import build_graph

logger = logging.getLogger(__name__)

SAMPLES = 64  # calibration samples the channel ranges are measured on
LIMIT = 100.0  # no channel is scaled by more than this, or less than its inverse
HOMOGENEOUS_ACTIVATIONS = ("linear", "relu", "leaky_relu")
HOMOGENEOUS_LAYERS = ("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
                      "ZeroPadding1D", "ZeroPadding2D", "Dropout", "SpatialDropout2D", "Identity")  # fmt: skip
READERS = (Kind.CONV, Kind.DEPTHWISE, Kind.SEPARABLE, Kind.DENSE)


@dataclass
class Pair:
    """One equalized tensor: `anchor` makes it (scaled by 1 / s), `reader` reads it (by s)."""

    anchor: GraphNode  # BN, or the producing layer; for an inner pair the separable layer itself
    reader: GraphNode
    inner: bool = False  # a separable layer's depthwise output
    tensor: str = ""  # the key of the tensor the reader reads (not for inner pairs)

    @property
    def name(self) -> str:
        return f"{self.reader.name} (depthwise)" if self.inner else self.reader.name


@dataclass
class EqualizeReport:
    """The tensors equalized, named by the layer that reads them, and each one's spread of channel
    ranges (widest over median) before and after."""

    tensors: list[str] = field(default_factory=list)
    spread_before: list[float] = field(default_factory=list)
    spread_after: list[float] = field(default_factory=list)

    def record(self) -> dict[str, object]:
        return {
            "tensors": len(self.tensors),
            "readers": self.tensors,
            "median_spread": {
                "before": round(float(np.median(self.spread_before)), 2) if self.tensors else 1.0,
                "after": round(float(np.median(self.spread_after)), 2) if self.tensors else 1.0,
            },
        }


def _activation(op: Any) -> str:
    fn = getattr(op, "activation", None)
    return "linear" if fn is None else getattr(fn, "__name__", type(fn).__name__)


def _homogeneous(node: GraphNode) -> bool:
    t, op = node.type_name, node.op
    if t == "Activation":
        return _activation(op) in HOMOGENEOUS_ACTIVATIONS
    if t == "ReLU":
        return op.max_value is None and float(op.threshold) == 0.0
    if t == "LeakyReLU":
        return True
    return t in HOMOGENEOUS_LAYERS


def _channels_last(node: GraphNode) -> bool:
    return getattr(node.op, "data_format", "channels_last") in (None, "channels_last")


def find_pairs(g: ChannelGraph) -> list[Pair]:
    """Every tensor that can be rescaled exactly (see the module's docstring)."""
    readers, calls = g.readers(), g.calls()
    ends = set(g.output_keys)
    pairs = []
    for n in g.nodes:
        if calls[n.layer_id] > 1 or not _channels_last(n):
            continue
        if n.kind is Kind.SEPARABLE:
            pairs.append(Pair(n, n, inner=True))
        if n.kind not in READERS or _activation(n.op) not in HOMOGENEOUS_ACTIVATIONS:
            continue
        anchor, key = n, n.outputs[0]
        while key not in ends and len(readers.get(key, [])) == 1:
            nxt = readers[key][0]
            if calls[nxt.layer_id] > 1 or len(nxt.inputs) != 1 or len(nxt.outputs) != 1:
                break
            if nxt.kind in READERS and _channels_last(nxt):
                if nxt.kind is not Kind.DENSE or len(g.tensors[key].shape) == 2:
                    pairs.append(Pair(anchor, nxt, tensor=key))
                break
            if nxt.kind is Kind.BN and calls[nxt.layer_id] == 1:
                anchor = nxt
            elif not _homogeneous(nxt):
                break
            key = nxt.outputs[0]
    return pairs


def _ranges(model: Any, g: ChannelGraph, pairs: list[Pair], x: np.ndarray) -> list[np.ndarray]:
    """Each pair's tensor's largest absolute value per channel, over the samples."""
    import keras

    probe = keras.Model(model.inputs[0], [p.reader.knode.arguments.keras_tensors[0] for p in pairs])
    out = [np.zeros(0)] * len(pairs)
    for start in range(0, len(x), 16):
        got = probe(x[start : start + 16], training=False)
        got = got if isinstance(got, (list, tuple)) else [got]
        for i, (p, t) in enumerate(zip(pairs, got, strict=True)):
            t = np.asarray(t)
            if p.inner:
                op = p.reader.op
                t = np.asarray(
                    keras.ops.depthwise_conv(
                        t, op.depthwise_kernel, op.strides, op.padding, "channels_last",
                        op.dilation_rate,
                    )
                )  # fmt: skip
            m = np.abs(t).reshape(-1, t.shape[-1]).max(0)
            out[i] = m if out[i].size == 0 else np.maximum(out[i], m)
    return out


def _mixing_weights(reader: GraphNode, inner: bool) -> np.ndarray | None:
    """The reader's weights as [input channels, output channels] when it mixes channels (each
    column over its own largest), else None."""
    op = reader.op
    if inner:
        w = np.asarray(op.pointwise_kernel)
    elif reader.kind in (Kind.CONV, Kind.DENSE):
        w = np.asarray(op.kernel)
    else:
        return None
    w = np.abs(w).reshape(-1, w.shape[-2], w.shape[-1]).max(0)
    return w / np.maximum(w.max(0, keepdims=True), 1e-12)


def scales(r: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """s_c for channel ranges r and the reader's normalized weights w (None: free to equalize)."""
    rel = r / max(float(r.max()), 1e-12)
    s = rel if w is None else np.sqrt(rel / np.maximum(w.max(1), 1e-12))
    if w is not None:
        s = s / s.max()  # only the ratios matter; the widest channel stays as it is
    s = np.where(r > 0, s, 1.0)
    return np.clip(s, 1.0 / LIMIT, LIMIT)


def _scale_out(anchor: GraphNode, inv: np.ndarray) -> None:
    """Multiply the anchor's output channels by inv."""
    op = anchor.op
    if anchor.kind is Kind.BN:
        for name in ("gamma", "beta"):
            var = getattr(op, name, None)
            if var is None:
                raise ValueError(f"{anchor.name} has no {name}")
            var.assign(np.asarray(var) * inv)
        return
    kernel = op.pointwise_kernel if anchor.kind is Kind.SEPARABLE else op.kernel
    k = np.asarray(kernel)
    if anchor.kind is Kind.DEPTHWISE:
        kernel.assign((k.reshape(*k.shape[:-2], -1) * inv).reshape(k.shape))
    else:
        kernel.assign(k * inv)
    if getattr(op, "bias", None) is not None:
        op.bias.assign(np.asarray(op.bias) * inv)


def _scale_in(reader: GraphNode, s: np.ndarray, inner: bool) -> None:
    """Multiply the reader's weights for input channel c by s_c."""
    op = reader.op
    if inner:
        kernel = op.pointwise_kernel
    elif reader.kind is Kind.SEPARABLE:
        kernel = op.depthwise_kernel
    else:
        kernel = op.kernel
    k = np.asarray(kernel)
    kernel.assign(k * s[:, None])


def _spread(r: np.ndarray) -> float:
    live = r[r > 0]
    return float(live.max() / np.median(live)) if live.size else 1.0


def equalize(model: Any, x: np.ndarray, samples: int = SAMPLES) -> tuple[Any, EqualizeReport]:
    """A copy of `model` with every qualifying tensor equalized (the same model in float), and
    what was done; the model itself, with an empty report, when nothing qualifies."""
    copy = copy_model(model)
    g = build_graph(copy)
    pairs = find_pairs(g)
    report = EqualizeReport()
    if not pairs:
        return model, report
    for p, r in zip(pairs, _ranges(copy, g, pairs, x[:samples]), strict=True):
        if not np.any(r > 0):
            continue
        s = scales(r, _mixing_weights(p.reader, p.inner))
        if p.inner:
            op = p.reader.op
            k = np.asarray(op.depthwise_kernel)
            op.depthwise_kernel.assign((k.reshape(*k.shape[:-2], -1) / s).reshape(k.shape))
        else:
            _scale_out(p.anchor, 1.0 / s)
        _scale_in(p.reader, s, p.inner)
        report.tensors.append(p.name)
        report.spread_before.append(_spread(r))
        report.spread_after.append(_spread(r / s))
    logger.info("equalized %d tensor(s): %s", len(report.tensors), ", ".join(report.tensors))
    return copy, report
