"""What every decoder shares: the OutputDecoder base, Detection and BBox, DecoderError, and the
score activations. The decoders themselves are one module each (see agent/decoders/__init__.py).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from agent.bundle.manifest import Decoder, Manifest, OutputRole, OutputSpec
from agent.errors import EdgegapError
from agent.geometry.letterbox import FrameTransform

logger = logging.getLogger(__name__)


class DecoderError(EdgegapError, ValueError):
    """A manifest whose outputs or decoder parameters do not fit its declared decoder."""


@dataclass(frozen=True, slots=True)
class BBox:
    """An axis-aligned box in pixels: xmin, ymin inclusive corner, xmax, ymax exclusive corner."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def width(self) -> float:
        return max(0.0, self.xmax - self.xmin)

    @property
    def height(self) -> float:
        return max(0.0, self.ymax - self.ymin)

    @property
    def area(self) -> float:
        return self.width * self.height

    def scale(self, sx: float, sy: float) -> BBox:
        return BBox(self.xmin * sx, self.ymin * sy, self.xmax * sx, self.ymax * sy)

    def translate(self, dx: float, dy: float) -> BBox:
        return BBox(self.xmin + dx, self.ymin + dy, self.xmax + dx, self.ymax + dy)

    def intersect(self, other: BBox) -> BBox:
        return BBox(
            max(self.xmin, other.xmin),
            max(self.ymin, other.ymin),
            min(self.xmax, other.xmax),
            min(self.ymax, other.ymax),
        )

    def iou(self, other: BBox) -> float:
        inter = self.intersect(other).area
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def as_list(self, digits: int = 1) -> list[float]:
        return [
            round(self.xmin, digits),
            round(self.ymin, digits),
            round(self.xmax, digits),
            round(self.ymax, digits),
        ]


@dataclass(frozen=True, slots=True)
class Detection:
    class_id: int
    label: str
    score: float
    box: BBox | None = None  # None for a classifier's answer
    keypoints: tuple[float, ...] | None = None  # x, y pairs in source pixels (ssd_raw extra_values)


Outputs = Mapping[OutputRole | int, np.ndarray]  # by role; the tensor decoder reads by index


class OutputDecoder(ABC):
    """Turns one frame's outputs into detections. Built once per bundle; called once per frame."""

    decoder: ClassVar[Decoder]
    roles: ClassVar[tuple[OutputRole, ...]]
    publishes_tensors: ClassVar[bool] = False  # tensors() adds the frame's `tensors` object

    def __init__(
        self,
        manifest: Manifest,
        score_threshold: float = 0.5,
        max_detections: int = 100,
        top_k: int = 5,
    ):
        self.manifest = manifest
        self.labels = manifest.labels
        self.extra: dict[str, Any] = dict(manifest.extra)
        self.label_offset = int(self.extra.get("label_offset", 0))
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.top_k = top_k
        # Labels by class id, looked up once here instead of per detection per frame.
        self._names = tuple(
            self.label(c) for c in range(max(len(self.labels) - self.label_offset, 0))
        )
        self._transform: FrameTransform | None = None
        for role in self.roles:
            try:
                manifest.output(role)
            except KeyError as exc:
                raise DecoderError(
                    f"decoder {self.decoder.value} needs an output with role {role.value}"
                ) from exc

    def label(self, class_id: int) -> str:
        k = class_id + self.label_offset
        return self.labels[k] if 0 <= k < len(self.labels) else f"class{class_id}"

    def warn_label_count(self, spec: OutputSpec, classes: int, note: str = "") -> None:
        """Warn (the bundle still loads) when the labels do not name `classes` classes: every
        detection would carry a neighbour's label, or class<N>."""
        named = len(self.labels) - self.label_offset
        if not self.labels or named == classes:
            return
        hint = ""
        if named == classes + 1 and self.label_offset == 0:
            hint = " (set label_offset: 1 if the first label is the background)"
        logger.warning(
            "%s: %s is %s; that is %d classes%s, the labels name %d%s",
            self.decoder.value, spec.role.value, spec.shape, classes, note, named, hint,
        )  # fmt: skip

    @abstractmethod
    def __call__(self, outputs: Outputs, transform: FrameTransform | None) -> list[Detection]: ...

    def tensors(self, outputs: Any) -> dict[str, Any] | None:
        """The frame's `tensors` object, for a decoder that publishes_tensors."""
        return None

    def _same(self, transform: FrameTransform) -> FrameTransform:
        """A fixed-size source frames every image alike: the last equal transform is reused, so
        its mapping to source pixels, already computed, is not computed again for each frame."""
        if transform is self._transform or transform == self._transform:
            return self._transform
        self._transform = transform
        return transform

    def _detections(
        self,
        boxes_norm: np.ndarray,
        classes: np.ndarray,
        scores: np.ndarray,
        transform: FrameTransform | None,
        points: np.ndarray | None = None,
    ) -> list[Detection]:
        """boxes_norm [N, 4] xyxy on the model input in [0, 1] -> Detections in source pixels;
        points [N, K, 2] (x, y normalized), when given, become each detection's keypoints."""
        if not len(boxes_norm):
            return []
        finite = np.isfinite(scores) & np.isfinite(classes) & np.isfinite(boxes_norm).all(axis=1)
        if points is not None:
            finite &= np.isfinite(points).reshape(len(points), -1).all(axis=1)
        if not finite.all():  # a broken model's NaN or inf is no detection, nor valid JSON
            boxes_norm, classes, scores = boxes_norm[finite], classes[finite], scores[finite]
            points = None if points is None else points[finite]
        px = self._to_source(boxes_norm, transform)
        names, known = self._names, len(self._names)
        # tolist() yields the same Python ints and floats as int()/float() per element, in one call.
        out = [
            Detection(c, names[c] if 0 <= c < known else self.label(c), s, BBox(*b))
            for b, c, s in zip(
                px.tolist(), classes.astype(np.int64).tolist(), scores.tolist(), strict=True
            )
        ]
        if points is None or not points.size:
            return out
        n, k = points.shape[0], points.shape[1]
        flat = np.tile(points.reshape(-1, 2), (1, 2))  # (x, y) as degenerate boxes (x, y, x, y)
        kp = self._to_source(flat, transform)[:, :2].reshape(n, 2 * k)
        return [
            Detection(d.class_id, d.label, d.score, d.box, tuple(row))
            for d, row in zip(out, kp.tolist(), strict=True)
        ]

    def _to_source(self, norm: np.ndarray, transform: FrameTransform | None) -> np.ndarray:
        if transform is not None:
            return self._same(transform).to_source(norm)
        return norm.astype(np.float32)


def check_output(
    decoder: str,
    spec: OutputSpec,
    rank: int | None = None,
    last: int | None = None,
    hint: str = "",
) -> None:
    """Refuse, at load, an output whose dtype, rank or last dimension the decoder cannot read."""
    if spec.dtype not in NUMERIC:
        raise DecoderError(f"{decoder}: {spec.role.value} is {spec.dtype}, not a number type")
    if spec.dtype not in ("float32", "float16", "int32") and spec.scale <= 0:
        raise DecoderError(
            f"{decoder}: {spec.role.value} is {spec.dtype} without a quantization scale"
        )
    if rank is not None and len(spec.shape) != rank:
        raise DecoderError(
            f"{decoder}: {spec.role.value} is {spec.shape}; it needs {rank} dimensions"
        )
    if last is not None and spec.shape[-1] != last:
        raise DecoderError(f"{spec.role.value} is {spec.shape}; {hint}")


NUMERIC = frozenset({"float32", "float16", "int8", "uint8", "int16", "int32"})


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow for large |x|, in float32."""
    return (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float32)))).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


ACTIVATIONS = {"none": lambda x: x, "sigmoid": sigmoid, "softmax": _softmax}
