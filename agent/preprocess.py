"""Pixels to input tensor, exactly as the manifest says the model was calibrated.

Normalization ((p - mean) / std) and quantization (x / scale + zero_point) are folded into a
single per-channel affine map p * a + b, applied in one pass over the pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from agent.manifest import InputSpec

logger = logging.getLogger(__name__)

_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


@dataclass(frozen=True)
class Normalizer:
    """Maps HxWxC pixels (0..255, in the model's color order) to the model's input tensor."""

    scale: np.ndarray  # per channel, float32
    offset: np.ndarray  # per channel, float32
    dtype: np.dtype
    clip: tuple[int, int] | None

    @classmethod
    def from_spec(cls, spec: InputSpec) -> Normalizer:
        channels = spec.shape[-1]
        mean = np.broadcast_to(np.asarray(spec.mean, np.float64), (channels,))
        std = np.broadcast_to(np.asarray(spec.std, np.float64), (channels,))
        a, b = 1.0 / std, -mean / std
        dtype = np.dtype(spec.dtype)
        clip = _INT_RANGES.get(dtype.name)
        if clip is not None:
            if spec.scale <= 0:
                raise ValueError(f"integer input {dtype.name} needs a positive quantization scale")
            a, b = a / spec.scale, b / spec.scale + spec.zero_point
        return cls(a.astype(np.float32), b.astype(np.float32), dtype, clip)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels.astype(np.float32) * self.scale + self.offset
        if self.clip is not None:
            np.rint(x, out=x)
            np.clip(x, self.clip[0], self.clip[1], out=x)
        return x.astype(self.dtype)[np.newaxis]


def dequantize(value: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor to float; float tensors pass through as float32."""
    if scale > 0 and np.issubdtype(value.dtype, np.integer):
        return (value.astype(np.float32) - zero_point) * scale
    return value.astype(np.float32)
