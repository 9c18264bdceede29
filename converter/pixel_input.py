"""Pixel-exact int8 input: the input normalization folded into the model's first layers.

With --mean 127.5 --std 127.5 the int8 input gets scale 2/255 and zero point -1, so every pixel p
maps to p - 128.5: a rounding tie. Round-half-even (NumPy, the host and the agent) then merges
pixel pairs, round-half-away (TFLite's QUANTIZE op) skips a level, and neither is the float
model's input. Folding the normalization into the model fixes it: the model takes z = p - 128
(as float during conversion, calibrated to exactly [-128, 127], so the int8 input has scale 1 and
zero point 0, and a uint8 input is the pixel itself), and the first convolutions compute
x = (z + 128 - mean) / std themselves: their kernels are divided by std per input channel and the
constant goes into their bias (or the batch normalization right after a bias-less one).

Borders: zero padding of z is pixel 128, not the mean; the folded model equals the original fed
a border of pixel 128 instead of `mean`. Folding is done only where that is at most
MAX_BORDER_LEVELS pixel levels away (mean 127.5: half a level), or where nothing pads.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from agent.errors import EdgegapError
from converter.data import Dataset, Normalization
from converter.loading import copy_model
from converter.pruning.graph import GraphNode, Kind, PruningError
from converter.pruning.trace import build_graph

logger = logging.getLogger(__name__)

PIXEL_OFFSET = 128.0  # int8 input = pixel - 128
MAX_BORDER_LEVELS = 1.0


class PixelFoldError(EdgegapError, ValueError):
    """The normalization cannot be folded into this model; the message says why."""


@dataclass(frozen=True)
class PixelFold:
    """What was done: the layers changed, the normalization they absorbed, the border offset."""

    layers: list[str]
    mean: list[float]
    std: list[float]
    border_levels: float  # |128 - mean| at zero-padded borders, in pixel levels (0: no padding)

    def record(self) -> dict[str, Any]:
        return {
            "pixel_exact": True,
            "int8_input": "pixel - 128",
            "folded_into": self.layers,
            "normalization_folded": {"mean": self.mean, "std": self.std},
            "border_pixel_levels": round(self.border_levels, 4),
        }


def already_exact(norm: Normalization, channels: int) -> bool:
    """True when (pixel - mean) / std over 0..255 quantizes to pixel + constant with no rounding:
    one std for every channel and whole-number means."""
    mean = np.broadcast_to(np.asarray(norm.mean, np.float64), (channels,))
    std = np.broadcast_to(np.asarray(norm.std, np.float64), (channels,))
    return bool(np.all(std == std[0]) and np.all(mean == mean[0]) and float(mean[0]).is_integer())


def _per_channel(values: list[float], channels: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(values, np.float64), (channels,)).copy()


def fold_normalization(model: Any, norm: Normalization) -> tuple[Any, PixelFold]:
    """A copy of `model` taking z = pixel - 128 where `model` takes (pixel - mean) / std."""
    if len(getattr(model, "inputs", None) or []) != 1:
        raise PixelFoldError("pixel-exact input needs a model with one image input")
    channels = int(model.inputs[0].shape[-1])
    mean, std = _per_channel(norm.mean, channels), _per_channel(norm.std, channels)
    try:
        folded = copy_model(model)
        graph = build_graph(folded)
    except PruningError as exc:
        raise PixelFoldError(f"cannot fold the normalization: {exc}") from exc
    except Exception as exc:  # a layer that cannot be cloned from its config
        raise PixelFoldError(f"cannot copy the model to fold the normalization ({exc})") from exc
    by_input = {k: n for n in graph.nodes for k in n.inputs}
    reached, padded, firsts = set(graph.input_keys), False, []
    for node in graph.nodes:
        if not any(k in reached for k in node.inputs):
            continue
        if node.type_name.startswith("ZeroPadding"):
            padded = True
            reached.update(node.outputs)
        elif node.kind in (Kind.CONV, Kind.DEPTHWISE) and len(node.inputs) == 1:
            padded = padded or getattr(node.op, "padding", "valid") == "same"
            firsts.append(node)
        else:
            raise PixelFoldError(
                f"cannot fold the normalization: the input reaches {node.name!r} ({node.type_name}) "
                "before a convolution"
            )
    border = float(np.max(np.abs(PIXEL_OFFSET - mean))) if padded else 0.0
    if border > MAX_BORDER_LEVELS:
        raise PixelFoldError(
            f"cannot fold the normalization: zero padding would be pixel 128, {border:.3g} levels "
            f"from the mean ({MAX_BORDER_LEVELS:g} at most)"
        )
    changed = []
    for node in firsts:
        changed += _fold_into(node, by_input, mean, std)
    fold = PixelFold(changed, mean.tolist(), std.tolist(), border)
    logger.info("normalization folded into %s", ", ".join(changed))
    return folded, fold


def _fold_into(
    node: GraphNode, by_input: dict[str, GraphNode], mean: np.ndarray, std: np.ndarray
) -> list[str]:
    """Scale one first convolution's kernel by 1/std and add the constant to its bias (or BN)."""
    op = node.op
    kernel = op.kernel.numpy().astype(np.float64)  # (kh, kw, in, out) or (kh, kw, in, mult)
    offset = (PIXEL_OFFSET - mean) / std  # x = z / std + offset, per input channel
    scaled = kernel / std[:, None]
    if node.kind is Kind.DEPTHWISE:
        const = (kernel * offset[:, None]).sum(axis=(0, 1)).reshape(-1)
    else:
        const = np.einsum("hwio,i->o", kernel, offset)
    op.kernel.assign(scaled.astype(np.float32))
    if getattr(op, "use_bias", False) and getattr(op, "bias", None) is not None:
        op.bias.assign((op.bias.numpy() + const).astype(np.float32))
        return [node.name]
    activation = getattr(getattr(op, "activation", None), "__name__", "linear")
    after = by_input.get(node.outputs[0])
    if activation != "linear" or after is None or after.kind is not Kind.BN:
        raise PixelFoldError(
            f"cannot fold the normalization: {node.name!r} has no bias and no batch normalization after it"
        )
    bn = after.op
    bn.moving_mean.assign((bn.moving_mean.numpy() - const).astype(np.float32))
    return [node.name, after.name]


def to_pixel_space(data: Dataset, norm: Normalization, pin_range: bool = False) -> Dataset:
    """Normalized inputs as z = pixel - 128; with `pin_range`, the first sample's first two values
    are set to -128 and 127 so calibration gives the input scale 1 and zero point 0."""
    channels = data.x.shape[-1]
    mean = _per_channel(norm.mean, channels).astype(np.float32)
    std = _per_channel(norm.std, channels).astype(np.float32)
    z = np.rint(data.x * std + mean - np.float32(PIXEL_OFFSET)).astype(np.float32)
    if pin_range and len(z):
        flat = z[0].reshape(-1)
        flat[0], flat[-1] = -PIXEL_OFFSET, 255.0 - PIXEL_OFFSET
    return replace(data, x=z)


def pixel_normalization(norm: Normalization, channels: int) -> Normalization:
    """What the device applies to a folded model: (pixel - 128) / 1."""
    return Normalization([PIXEL_OFFSET] * channels, [1.0] * channels, norm.color_order, norm.resize)


def on_pixels(
    predict: Callable[[np.ndarray], Any], norm: Normalization
) -> Callable[[np.ndarray], Any]:
    """The original model's outputs on inputs given as z = pixel - 128."""

    def run(predict: Callable[[np.ndarray], Any], z: np.ndarray) -> Any:
        channels = z.shape[-1]
        mean = _per_channel(norm.mean, channels).astype(np.float32)
        std = _per_channel(norm.std, channels).astype(np.float32)
        return predict(((z + np.float32(PIXEL_OFFSET) - mean) / std).astype(np.float32))

    return functools.partial(run, predict)
