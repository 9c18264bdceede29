"""The transform between a source frame and the model input: stretch or letterbox, and back.

A frame of src_w x src_h is resized bilinear to the content size and placed at the padding
offset of an in_w x in_h canvas (letterbox: one scale for both axes, centered, bars of
LETTERBOX_FILL; stretch: each axis its own scale, no bars). FrameTransform records where the
frame landed so boxes on the model input map back to source pixels. The converter resizes its
calibration, validation and evaluation images with the same functions the agent uses per frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from agent.bundle.manifest import ResizeMode

logger = logging.getLogger(__name__)

LETTERBOX_FILL = 0  # pixel value of the letterbox bars, before normalization


@dataclass(frozen=True)
class FrameTransform:
    """Where the source frame landed in the model input, so boxes can be mapped back to it."""

    src_w: int
    src_h: int
    in_w: int
    in_h: int
    scale_x: float  # model-input pixels per source pixel
    scale_y: float
    pad_x: float  # model-input pixels of padding on the left (letterbox)
    pad_y: float  # ... and on the top

    @property
    def content_size(self) -> tuple[int, int]:
        """Width and height of the resized frame inside the model input (the input's own size
        when stretched)."""
        return max(1, round(self.src_w * self.scale_x)), max(1, round(self.src_h * self.scale_y))

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """[N, 4] xmin, ymin, xmax, ymax normalized to the model input -> source pixels, clipped."""
        mul, add, hi = self._affine
        out = np.multiply(boxes, mul, dtype=np.float32)
        out += add
        return np.clip(out, 0.0, hi, out=out)

    def to_source_fraction(self, boxes: np.ndarray) -> np.ndarray:
        """to_source() as fractions of the source frame: [N, 4] xyxy in [0, 1]."""
        return self.to_source(boxes) / self._affine[2]

    @cached_property
    def xy_map(self) -> tuple[float, float, float, float, float, float]:
        """to_source() as plain floats: x and y multiplier, x and y offset, x and y upper bound."""
        (mx, my, _, _), (ax, ay, _, _), (hx, hy, _, _) = (a.tolist() for a in self._affine)
        return mx, my, ax, ay, hx, hy

    @cached_property
    def _affine(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-coordinate multiplier, offset and upper clip bound, computed once per transform."""
        mx, my = self.in_w / self.scale_x, self.in_h / self.scale_y
        ax, ay = -self.pad_x / self.scale_x, -self.pad_y / self.scale_y
        return (
            np.array([mx, my, mx, my], np.float32),
            np.array([ax, ay, ax, ay], np.float32),
            np.array([self.src_w, self.src_h, self.src_w, self.src_h], np.float32),
        )


def fit(src_w: int, src_h: int, in_w: int, in_h: int, mode: ResizeMode) -> FrameTransform:
    """The transform that puts a src_w x src_h frame on an in_w x in_h model input."""
    if mode is ResizeMode.LETTERBOX:
        s = min(in_w / src_w, in_h / src_h)
        new_w, new_h = max(1, round(src_w * s)), max(1, round(src_h * s))
        return FrameTransform(
            src_w, src_h, in_w, in_h, s, s, (in_w - new_w) // 2, (in_h - new_h) // 2
        )
    return FrameTransform(src_w, src_h, in_w, in_h, in_w / src_w, in_h / src_h, 0, 0)


def place(
    img: np.ndarray, t: FrameTransform, fill: int = LETTERBOX_FILL, canvas: np.ndarray | None = None
) -> np.ndarray:
    """HxW or HxWxC pixels put on the model input as t says: resized bilinear to its content
    size at its padding offset, on `canvas` (made of `fill` when not given) unless they fill it."""
    new_w, new_h = t.content_size
    inner = resize_bilinear(img, new_w, new_h)
    if (new_w, new_h) == (t.in_w, t.in_h):
        return inner
    if canvas is None:
        canvas = np.full((t.in_h, t.in_w, *img.shape[2:]), fill, img.dtype)
    x0, y0 = int(t.pad_x), int(t.pad_y)
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = inner.reshape(new_h, new_w, *img.shape[2:])
    return canvas


def resize_image(
    img: np.ndarray, size: tuple[int, int], mode: ResizeMode = ResizeMode.STRETCH
) -> tuple[np.ndarray, FrameTransform]:
    """HxWxC (or HxW) pixels resized to size (height, width), stretched or letterboxed, and the
    transform back to the image."""
    t = fit(img.shape[1], img.shape[0], size[1], size[0], mode)
    return place(img, t), t


def resize_bilinear(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bilinear resize to w x h, keeping a trailing channel axis of 1; the image itself when it
    is that size already. Bilinear is what calibration used, and several times faster than area."""
    if img.shape[1] == w and img.shape[0] == h:
        return img
    out = cv2.resize(img, (max(w, 1), max(h, 1)), interpolation=cv2.INTER_LINEAR)
    return out.reshape(out.shape[:2] + img.shape[2:])
