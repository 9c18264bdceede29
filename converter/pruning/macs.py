"""Multiply-accumulate, parameter and weight-byte counts, per sample.

Only convolutions and dense layers count: they are where a CPU spends its time. The same formula
serves the plan's prediction (channel counts after removal) and the rebuilt model's real count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from converter.pruning.trace import build_graph

logger = logging.getLogger(__name__)

_CONV = {"Conv1D", "Conv2D", "Conv3D"}
_TRANSPOSE = {"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}
_DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}
_SEPARABLE = {"SeparableConv1D", "SeparableConv2D"}


def _spatial(shape: tuple[int | None, ...]) -> int:
    return int(np.prod([d or 1 for d in shape[1:-1]])) if len(shape) > 2 else 1


def layer_macs(
    op: Any,
    in_shape: tuple[int | None, ...],
    out_shape: tuple[int | None, ...],
    cin: int,
    cout: int,
) -> int:
    """MACs of one call, given its input/output shapes and the (possibly reduced) channel counts."""
    t = type(op).__name__
    if t in _CONV:
        k = int(np.prod(op.kernel_size))
        return _spatial(out_shape) * k * cin * cout // max(int(op.groups), 1)
    if t in _TRANSPOSE:
        return _spatial(in_shape) * int(np.prod(op.kernel_size)) * cin * cout
    if t in _DEPTHWISE:
        return _spatial(out_shape) * int(np.prod(op.kernel_size)) * cin * int(op.depth_multiplier)
    if t in _SEPARABLE:
        mid = cin * int(op.depth_multiplier)
        return _spatial(out_shape) * (int(np.prod(op.kernel_size)) * mid + mid * cout)
    if t == "Dense":
        return _spatial(in_shape) * cin * cout
    return 0


def graph_macs(g: Any, channels: Callable[[str], int | None] | None = None) -> int:
    """Total MACs of a ChannelGraph; `channels(key)` overrides a tensor's channel count."""
    total = 0
    for n in g.nodes:
        if not n.inputs or not n.outputs:
            continue
        ti, to = g.tensors[n.inputs[0]], g.tensors[n.outputs[0]]
        cin = channels(ti.key) if channels else None
        cout = channels(to.key) if channels else None
        cin = ti.channels if cin is None else cin
        cout = to.channels if cout is None else cout
        if cin is None or cout is None:
            continue
        total += layer_macs(n.op, ti.shape, to.shape, cin, cout)
    return total


@dataclass(frozen=True)
class ModelCost:
    macs: int
    params: int
    bytes: int  # float weights, as stored

    def ratio(self, base: ModelCost) -> dict[str, float]:
        return {
            "macs": self.macs / base.macs if base.macs else 1.0,
            "params": self.params / base.params if base.params else 1.0,
            "bytes": self.bytes / base.bytes if base.bytes else 1.0,
        }


def count_macs(model: Any) -> int:
    return graph_macs(build_graph(model))


def model_cost(model: Any) -> ModelCost:
    weights = model.weights
    return ModelCost(
        macs=count_macs(model),
        params=int(sum(int(np.prod(w.shape)) for w in weights)),
        bytes=int(sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in weights)),
    )
