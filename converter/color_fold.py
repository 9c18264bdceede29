"""Folding the camera's BGR channel order into a model, so the device feeds frames as they come.

OpenCV delivers BGR frames; a model trained on RGB needs each frame's channels swapped before
inference, one more pass over the pixels on every frame. Where the input's channels reach only
layers that treat every channel alike (padding, scalar rescaling, activations, pooling) or keep
them apart (batch normalization, depthwise convolution, PReLU, per-channel rescaling and
normalization), and then convolutions or dense layers, reversing those layers' per-channel
weights and constants, and the first convolutions' kernels along their input channels, gives a
model that takes BGR and computes what the original computes on RGB. Quantization is unaffected:
the weight scales are per output channel, and the input's scale is one number.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from agent.errors import EdgegapError
from converter.loading import copy_model
from converter.pruning.graph import GraphNode, Kind, PruningError
from converter.pruning.trace import build_graph

logger = logging.getLogger(__name__)


class FoldError(EdgegapError, ValueError):
    """The model's input cannot take BGR by a change of weights; the message says why."""


_HINT = "convert without --fold-bgr (the device then swaps the channels of each frame)"


def fold_bgr(model: Any) -> tuple[Any, list[str]]:
    """A copy of `model` that takes BGR where `model` takes RGB (or the other way round: the swap
    is its own inverse), and the layers whose weights or constants were reversed. The original
    model is not changed."""

    if len(getattr(model, "inputs", None) or []) != 1:
        raise FoldError(f"--fold-bgr needs a model with one image input; {_HINT}")
    channels = model.inputs[0].shape[-1]
    if channels != 3:
        raise FoldError(
            f"--fold-bgr needs a 3-channel input; this model takes {channels} channel(s)"
        )
    try:
        folded = copy_model(model)
        graph = build_graph(folded)
    except PruningError as exc:
        raise FoldError(f"cannot fold the channel swap: {exc}") from exc
    except Exception as exc:  # a layer that cannot be cloned from its config
        raise FoldError(f"cannot copy the model to fold the channel swap ({exc}); {_HINT}") from exc
    calls = graph.calls()
    reached = set(graph.input_keys)  # tensors whose channels are still in the input's order
    changed: list[str] = []
    for node in graph.nodes:
        hit = [k in reached for k in node.inputs]
        if not any(hit):
            continue
        if calls[node.layer_id] > 1:
            raise FoldError(f"cannot fold the channel swap: layer {node.name!r} is shared; {_HINT}")
        if node.kind in (Kind.CONV, Kind.DENSE):  # each filter mixes the channels: they stop here
            _reverse(node, "kernel", axis=-2)
            changed.append(node.name)
            continue
        reversed_ = _reverse_per_channel(node)
        if reversed_:
            changed.append(node.name)
        elif reversed_ is None and not (
            node.kind is Kind.PASS or (node.kind is Kind.MERGE and all(hit))
        ):
            raise FoldError(
                f"cannot fold the channel swap: the input's channels reach {node.name!r} "
                f"({node.type_name}), which does not keep them apart; {_HINT}"
            )
        reached.update(node.outputs)
    if reached & set(graph.output_keys):
        raise FoldError(
            f"cannot fold the channel swap: the input's channels reach an output; {_HINT}"
        )
    logger.info("BGR folded into %s", ", ".join(changed))
    return folded, changed


def _reverse_per_channel(node: GraphNode) -> bool | None:
    """Reverse the per-channel state of a layer that keeps channels apart: True when reversed,
    False when it has none (one value for every channel), None when the layer is not of this kind."""
    import keras

    op, t = node.op, node.type_name
    if node.kind is Kind.BN:
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            _reverse(node, name, axis=-1, optional=True)
        return True
    if node.kind is Kind.DEPTHWISE and getattr(op, "depth_multiplier", 1) == 1:
        _reverse(node, "kernel", axis=-2)
        _reverse(node, "bias", axis=-1, optional=True)
        return True
    if node.kind is Kind.PRELU:
        if np.shape(op.alpha)[-1] == 1:
            return False
        _reverse(node, "alpha", axis=-1)
        return True
    if t == "Rescaling":  # preprocessing: constants in the config, not weights
        if np.ndim(op.scale) == 0 and np.ndim(op.offset) == 0:
            return False
        op.scale, op.offset = _flipped(op.scale), _flipped(op.offset)
        return True
    if (
        t == "Normalization"
        and len(op.axis) == 1
        and op.axis[0] in (-1, len(node.knode.outputs[0].shape) - 1)
    ):
        if op.input_mean is None:  # adapted: the statistics are weights
            _reverse(node, "adapt_mean", axis=-1)
            _reverse(node, "adapt_variance", axis=-1)
            op.finalize_state()
        else:
            op.input_mean, op.input_variance = _flipped(op.input_mean), _flipped(op.input_variance)
            op.mean = keras.ops.flip(op.mean, axis=-1)
            op.variance = keras.ops.flip(op.variance, axis=-1)
        return True
    return None


def _flipped(value: Any) -> Any:
    """A per-channel constant reversed (kept a list, as configs hold them); a scalar as it is."""
    return value if np.ndim(value) == 0 else np.flip(np.asarray(value), axis=-1).tolist()


def _reverse(node: GraphNode, name: str, axis: int, optional: bool = False) -> None:
    var = getattr(node.op, name, None)
    if var is None:
        if optional:
            return
        raise FoldError(f"cannot fold the channel swap: {node.name!r} has no {name}")
    var.assign(np.flip(var.numpy(), axis=axis))
