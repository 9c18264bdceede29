"""Pixels to input tensor, exactly as the manifest says the model was calibrated.

A frame is resized or letterboxed, put in the model's color order, then normalized and
quantized; the FrameTransform (agent.geometry.letterbox) maps boxes on the model input back to
source pixels.

Normalization ((p - mean) / std) and quantization (x / scale + zero_point) are folded into a
single per-channel affine map p * a + b, applied in one pass over the pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from agent.bundle.manifest import ColorOrder, InputSpec
from agent.geometry.letterbox import LETTERBOX_FILL, FrameTransform, fit, place, resize_bilinear

logger = logging.getLogger(__name__)

_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
TIE_GRID = 1024.0  # values closer than 1/2048 to a rounding tie are taken as the tie


def round_to_int(x: np.ndarray) -> np.ndarray:
    """Round in place to whole numbers, ties to even. A value within float error of a tie (n + 0.5)
    counts as the tie, so host (float64) and device (float32) arithmetic round every pixel alike."""
    np.rint(x * TIE_GRID, out=x)
    x /= TIE_GRID
    np.rint(x, out=x)
    return x


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
            round_to_int(x)
            np.clip(x, self.clip[0], self.clip[1], out=x)
        return x.astype(self.dtype)[np.newaxis]


def dequantize(value: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor to float; float32 tensors pass through as they are (no copy)."""
    if scale > 0 and np.issubdtype(value.dtype, np.integer):
        return (value.astype(np.float32) - zero_point) * scale
    return np.asarray(value, dtype=np.float32)


class Preprocessor:
    """BGR frame -> model input tensor: resize or letterbox, color order, then one lookup pass.

    Normalization and quantization are both per-channel maps of a uint8 pixel, so the whole
    Normalizer is precomputed as a 256-entry table per channel and applied with cv2.LUT: one
    pass over the resized pixels that yields the final dtype. The table is built by running the
    Normalizer itself on every pixel value, so results are identical to it bit for bit.
    """

    def __init__(self, spec: InputSpec, pad_value: int = LETTERBOX_FILL) -> None:
        if len(spec.shape) != 4:
            raise ValueError(f"image models take [1, H, W, C] input; this one takes {spec.shape}")
        _, self.in_h, self.in_w, self.channels = spec.shape
        if spec.color_order is ColorOrder.GRAY and self.channels != 1:
            raise ValueError("gray color order needs a 1-channel input")
        if spec.color_order is not ColorOrder.GRAY and self.channels != 3:
            raise ValueError(f"{spec.color_order.value} color order needs a 3-channel input")
        self.spec = spec
        self.pad_value = pad_value
        norm = Normalizer.from_spec(spec)
        ramp = np.repeat(np.arange(256, dtype=np.uint8).reshape(1, 256, 1), self.channels, axis=2)
        self.lut = np.ascontiguousarray(norm(ramp)[0])  # (1, 256, C) in the input dtype
        self._pixel_map = _PixelMap.of(self.lut)
        self._canvas: np.ndarray | None = None
        self._transforms: dict[tuple[int, int], FrameTransform] = {}

    def new_input(self) -> np.ndarray:
        """An uninitialized [1, H, W, C] array of the input dtype, to pass as `out`."""
        return np.empty((1, self.in_h, self.in_w, self.channels), self.lut.dtype)

    def transform_for(self, src_w: int, src_h: int) -> FrameTransform:
        """The (immutable) transform for a source size; made once per size."""
        t = self._transforms.get((src_w, src_h))
        if t is None:
            t = self._transforms[(src_w, src_h)] = fit(
                src_w, src_h, self.in_w, self.in_h, self.spec.resize
            )
        return t

    def resize(self, bgr: np.ndarray) -> tuple[np.ndarray, FrameTransform]:
        """The frame resized (or letterboxed) to the model input, still BGR uint8."""
        src_h, src_w = bgr.shape[:2]
        t = self.transform_for(src_w, src_h)
        if t.content_size == (self.in_w, self.in_h):  # stretched, or the input's own aspect
            return resize_bilinear(bgr, self.in_w, self.in_h), t
        if self._canvas is None or self._canvas.shape[2] != bgr.shape[2]:
            self._canvas = np.full((self.in_h, self.in_w, bgr.shape[2]), self.pad_value, np.uint8)
        return place(bgr, t, canvas=self._canvas.copy()), t

    def __call__(
        self, bgr: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, FrameTransform]:
        """[1, H, W, C] input tensor in the model's dtype, and the transform back to the frame.

        With `out` (a [1, H, W, C] array of that dtype, such as the interpreter's own input
        buffer) the result is written there and `out` is returned. A BGR model (see `edgegap
        convert --fold-bgr`) takes the resized frame as it is: one pass maps it into `out`. Otherwise,
        when the pixel map works byte by byte (identity or top-bit flip), the color conversion
        writes straight into `out` and the map runs in place: two passes, no array allocated.
        """
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        resized, t = self.resize(bgr)
        shape = (1, self.in_h, self.in_w, self.channels)
        if out is None:
            return self._pixel_map(self._color(resized)).reshape(shape), t
        if out.shape != shape or out.dtype != self.lut.dtype:
            raise ValueError(
                f"output buffer is {out.dtype}{list(out.shape)}; the input is {self.lut.dtype}{list(shape)}"
            )
        plane = out.reshape(shape[1:] if self.channels > 1 else shape[1:3])
        if self.spec.color_order is ColorOrder.BGR:
            pixels = resized
        elif self._pixel_map.bytewise:
            pixels = self._color(resized, plane.view(np.uint8))
        else:
            pixels = self._color(resized)
        self._pixel_map(pixels, plane)
        return out, t

    def _color(self, bgr: np.ndarray, dst: np.ndarray | None = None) -> np.ndarray:
        """The resized frame in the model's color order, written into dst when given."""
        order = self.spec.color_order
        if order is ColorOrder.RGB:
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=dst)
        if order is ColorOrder.GRAY:
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY, dst=dst)
        if dst is None:
            return bgr
        np.copyto(dst, bgr)
        return dst


@dataclass(frozen=True)
class _PixelMap:
    """The cheapest exact way to apply a (1, 256, C) table: it is often a plain shift.

    Inputs normalized as pixel / 255 and quantized with scale 1/255 map a pixel p to p (uint8)
    or p - 128 (int8), which is the identity or a flip of the top bit; both work byte by byte, so
    they can run in place. Equal channels need a 1-channel table, which cv2.LUT applies about
    twice as fast. Each shortcut is taken only when it reproduces the table exactly.
    """

    kind: str  # "identity", "flip" or "lut"
    table: np.ndarray

    @classmethod
    def of(cls, lut: np.ndarray) -> _PixelMap:
        ramp = np.arange(256, dtype=np.uint8)
        columns = lut[0].T  # (C, 256)
        if not all(np.array_equal(col, columns[0]) for col in columns[1:]):
            return cls("lut", lut)
        col = columns[0]
        if col.dtype == np.uint8 and np.array_equal(col, ramp):
            return cls("identity", lut)
        if col.dtype == np.int8 and np.array_equal(col.view(np.uint8), ramp ^ 0x80):
            return cls("flip", lut)
        return cls("lut", np.ascontiguousarray(col.reshape(1, 256, 1)))

    @property
    def bytewise(self) -> bool:
        return self.kind != "lut"

    def __call__(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Mapped pixels; written into `out` when given (pixels' shape, the table's dtype). A
        bytewise map may be given `out` over the very bytes of `pixels`."""
        if self.kind == "identity":
            if out is None:
                return pixels
            if not np.may_share_memory(pixels, out):
                np.copyto(out, pixels)
            return out
        if self.kind == "flip":
            if out is None:
                return np.bitwise_xor(pixels, 0x80).view(np.int8)
            np.bitwise_xor(pixels, 0x80, out=out.view(np.uint8))
            return out
        if out is None:
            return cv2.LUT(pixels, self.table)
        result = cv2.LUT(pixels, self.table, dst=out)
        if not np.may_share_memory(result, out):  # cv2 chose a new array
            np.copyto(out, result)
        return out
