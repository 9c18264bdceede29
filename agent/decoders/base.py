"""Model outputs -> detections in source pixels. The decoder is chosen by the manifest, never guessed.

Each decoder is a pure function of dequantized output tensors (looked up by the roles the
manifest records) and the frame transform. Supported layouts:
  ssd_postprocess  TFLite_Detection_PostProcess: boxes, classes, scores, count
  ssd_raw          box encodings against anchors (manifest.extra), decoded here, then NMS
  yolo             [1, N, 4 + C] (cx, cy, w, h, class scores), then NMS
  classification   probabilities or logits -> top-k labels
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from agent.bundle.manifest import Decoder, Manifest, OutputRole
from agent.errors import EdgegapError
from agent.preprocess import FrameTransform

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


Outputs = Mapping[OutputRole, np.ndarray]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Greedy non-maximum suppression; boxes [N, 4] xyxy. Returns kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, limit: int
) -> np.ndarray:
    """Per-class NMS in one call: boxes of different classes are shifted apart so they never overlap."""
    if boxes.size == 0:
        return np.zeros(0, np.int64)
    span = float(np.max(boxes) - np.min(boxes)) + 1.0
    shifted = boxes + (classes.astype(np.float32) * span)[:, None]
    return nms(shifted, scores, iou, limit)


class OutputDecoder(ABC):
    """Turns one frame's outputs into detections. Built once per bundle; called once per frame."""

    decoder: ClassVar[Decoder]
    roles: ClassVar[tuple[OutputRole, ...]]

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

    @abstractmethod
    def __call__(self, outputs: Outputs, transform: FrameTransform | None) -> list[Detection]: ...

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
    ) -> list[Detection]:
        """boxes_norm [N, 4] xyxy on the model input in [0, 1] -> Detections in source pixels."""
        if not len(boxes_norm):
            return []
        finite = np.isfinite(scores) & np.isfinite(classes) & np.isfinite(boxes_norm).all(axis=1)
        if not finite.all():  # a broken model's NaN or inf is no detection, nor valid JSON
            boxes_norm, classes, scores = boxes_norm[finite], classes[finite], scores[finite]
        if transform is not None:
            px = self._same(transform).to_source(boxes_norm)
        else:
            px = boxes_norm.astype(np.float32)
        names, known = self._names, len(self._names)
        # tolist() yields the same Python ints and floats as int()/float() per element, in one call.
        return [
            Detection(c, names[c] if 0 <= c < known else self.label(c), s, BBox(*b))
            for b, c, s in zip(
                px.tolist(), classes.astype(np.int64).tolist(), scores.tolist(), strict=True
            )
        ]


_YXYX_TO_XYXY = np.array([1, 0, 3, 2])


class SSDPostprocessDecoder(OutputDecoder):
    """TFLite_Detection_PostProcess outputs: already decoded and suppressed on the model side."""

    decoder = Decoder.SSD_POSTPROCESS
    roles = (OutputRole.BOXES, OutputRole.CLASSES, OutputRole.SCORES, OutputRole.COUNT)

    def __call__(self, outputs: Outputs, transform: FrameTransform | None) -> list[Detection]:
        boxes = outputs[OutputRole.BOXES].reshape(-1, 4)
        scores = outputs[OutputRole.SCORES].reshape(-1)
        # max(0, nan) is 0 and min(inf, ...) the row count: a broken count cannot raise here
        n = int(min(max(0, outputs[OutputRole.COUNT].item(0)), len(scores), len(boxes)))
        if n <= SMALL_N:
            return self._small(boxes, scores, outputs[OutputRole.CLASSES].reshape(-1), n, transform)
        keep = np.flatnonzero(scores[:n] >= self.score_threshold)
        if not keep.size:  # nothing above threshold: skip the remaining array work
            return []
        if keep.size > 1:
            keep = keep[np.argsort(-scores[keep], kind="stable")]
        keep = keep[: self.max_detections]
        xyxy = np.clip(boxes[keep[:, None], _YXYX_TO_XYXY], 0.0, 1.0)
        classes = outputs[OutputRole.CLASSES].reshape(-1)[keep]
        return self._detections(xyxy, np.rint(classes), scores[keep], transform)

    def _small(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        n: int,
        transform: FrameTransform | None,
    ) -> list[Detection]:
        """The same answer for the usual handful of rows, in plain Python floats.

        The op emits at most max_detections rows (tens); a dozen NumPy calls on arrays that small
        cost more than the arithmetic, especially on the cold caches a camera-paced frame meets.
        """
        thr = self.score_threshold
        s = scores[:n].tolist()
        keep = [i for i in range(n) if s[i] >= thr]
        if not keep:
            return []
        keep.sort(key=s.__getitem__, reverse=True)  # stable, like the array path's argsort
        del keep[self.max_detections :]
        rows, cls = boxes[:n].tolist(), classes[:n].tolist()
        mx, my, ax, ay, hx, hy = self._same(transform).xy_map if transform else _IDENTITY
        names, known = self._names, len(self._names)
        out = []
        for i in keep:
            y0, x0, y1, x1 = rows[i]
            y0, x0 = min(max(y0, 0.0), 1.0), min(max(x0, 0.0), 1.0)  # NaN stays NaN
            y1, x1 = min(max(y1, 0.0), 1.0), min(max(x1, 0.0), 1.0)
            if not math.isfinite(s[i] + cls[i] + y0 + x0 + y1 + x1):  # as _detections drops
                continue
            c = round(cls[i])
            box = BBox(
                min(max(x0 * mx + ax, 0.0), hx),
                min(max(y0 * my + ay, 0.0), hy),
                min(max(x1 * mx + ax, 0.0), hx),
                min(max(y1 * my + ay, 0.0), hy),
            )
            out.append(Detection(c, names[c] if 0 <= c < known else self.label(c), s[i], box))
        return out


SMALL_N = 32  # rows up to which SSD post-process outputs are read in plain Python
_IDENTITY = (1.0, 1.0, 0.0, 0.0, 1.0, 1.0)  # no transform: boxes stay normalized


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


ACTIVATIONS = {"none": lambda x: x, "sigmoid": _sigmoid, "softmax": _softmax}


def grid_anchors(spec: Mapping[str, Any]) -> np.ndarray:
    """SSD anchors (ycenter, xcenter, h, w) from a grid spec, in [row, column, per-cell] order.

    spec: {"feature_maps": [G or [H, W] per level], "scales": [s or [s0, s1, ...] per level],
    "aspect_ratios": [r, ...]}. Per cell: one anchor per ratio r at the level's first scale
    (h = s0 / sqrt(r), w = s0 * sqrt(r)), then one square anchor per further scale.
    """
    maps, scales, ratios = spec["feature_maps"], spec["scales"], spec["aspect_ratios"]
    if len(maps) != len(scales):
        raise DecoderError("anchor_grid: feature_maps and scales must have the same length")
    rows: list[tuple[float, float, float, float]] = []
    for fmap, level in zip(maps, scales, strict=True):
        fh, fw = (fmap, fmap) if isinstance(fmap, int | float) else fmap
        level = [level] if isinstance(level, int | float) else list(level)
        shapes = [(level[0] / math.sqrt(r), level[0] * math.sqrt(r)) for r in ratios]
        shapes += [(s, s) for s in level[1:]]
        for y in range(int(fh)):
            for x in range(int(fw)):
                rows.extend(((y + 0.5) / fh, (x + 0.5) / fw, h, w) for h, w in shapes)
    return np.asarray(rows, np.float32)


class SSDRawDecoder(OutputDecoder):
    """Box encodings (ty, tx, th, tw) against anchors from manifest.extra, then per-class NMS.

    extra: anchors [[cy, cx, h, w], ...] or a grid spec {...} (under anchors or anchor_grid);
    box_scales [y, x, h, w] or box_coder {y_scale, x_scale, h_scale, w_scale} (default 10, 10, 5, 5); score_activation none|sigmoid|softmax; background_class (class 0 is background);
    iou_threshold (default 0.5).
    """

    decoder = Decoder.SSD_RAW
    roles = (OutputRole.RAW_BOXES, OutputRole.RAW_SCORES)

    def __init__(self, manifest: Manifest, **kw: Any) -> None:
        super().__init__(manifest, **kw)
        given = self.extra.get("anchors", self.extra.get("anchor_grid"))
        if isinstance(given, Mapping):  # a grid spec, as the converter's zoo records it
            self.anchors = grid_anchors(given)
        elif given is not None:
            self.anchors = np.asarray(given, np.float32).reshape(-1, 4)
        else:
            raise DecoderError("ssd_raw needs manifest.extra.anchors or manifest.extra.anchor_grid")
        count = manifest.output(OutputRole.RAW_BOXES).shape[-2]
        if len(self.anchors) != count:
            raise DecoderError(
                f"ssd_raw: {len(self.anchors)} anchors but the model has {count} boxes"
            )
        coder = self.extra.get("box_coder") or {}
        default_scales = [
            float(coder.get(k, d))
            for k, d in zip(
                ("y_scale", "x_scale", "h_scale", "w_scale"), (10, 10, 5, 5), strict=True
            )
        ]
        self.box_scales = np.asarray(self.extra.get("box_scales", default_scales), np.float32)
        act = str(self.extra.get("score_activation", "sigmoid"))
        if act not in ACTIVATIONS:
            raise DecoderError(
                f"ssd_raw: score_activation must be one of {', '.join(ACTIVATIONS)}, got {act!r}"
            )
        self.activation = ACTIVATIONS[act]
        self.background = bool(self.extra.get("background_class", True))
        self.iou_threshold = float(self.extra.get("iou_threshold", 0.5))

    def decode_boxes(self, enc: np.ndarray, anchors: np.ndarray | None = None) -> np.ndarray:
        """[K, 4] encodings against [K, 4] anchors (default: all) -> [K, 4] xyxy normalized."""
        a = self.anchors if anchors is None else anchors
        t = enc / self.box_scales
        cy = t[:, 0] * a[:, 2] + a[:, 0]
        cx = t[:, 1] * a[:, 3] + a[:, 1]
        h = np.exp(t[:, 2]) * a[:, 2]
        w = np.exp(t[:, 3]) * a[:, 3]
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)

    def __call__(self, outputs: Outputs, transform: FrameTransform | None) -> list[Detection]:
        enc = outputs[OutputRole.RAW_BOXES].reshape(-1, 4)
        scores = self.activation(outputs[OutputRole.RAW_SCORES].reshape(len(enc), -1))
        if self.background:
            scores = scores[:, 1:]
        best = np.argmax(scores, axis=1)
        best_score = scores[np.arange(len(scores)), best]
        cand = np.flatnonzero(best_score >= self.score_threshold)
        if cand.size > 1000:
            cand = cand[np.argsort(-best_score[cand])[:1000]]
        boxes = np.clip(self.decode_boxes(enc[cand], self.anchors[cand]), 0.0, 1.0)
        keep = batched_nms(
            boxes, best_score[cand], best[cand], self.iou_threshold, self.max_detections
        )
        return self._detections(boxes[keep], best[cand][keep], best_score[cand][keep], transform)


class YoloDecoder(OutputDecoder):
    """[1, N, 4 + C] rows of box then class scores, then per-class NMS.

    extra: box_format cxcywh|xyxy (default cxcywh); box_units normalized|pixels (of the model
    input; default normalized); objectness (a 5th column multiplies class scores; default false);
    transposed ([1, 4 + C, N] layout; default false); iou_threshold (default 0.45).
    """

    decoder = Decoder.YOLO
    roles = (OutputRole.YOLO,)

    def __init__(self, manifest: Manifest, **kw: Any) -> None:
        super().__init__(manifest, **kw)
        self.box_format = str(self.extra.get("box_format", "cxcywh"))
        self.units = str(self.extra.get("box_units", "normalized"))
        if self.box_format not in ("cxcywh", "xyxy") or self.units not in ("normalized", "pixels"):
            raise DecoderError(
                "yolo: box_format must be cxcywh or xyxy, box_units normalized or pixels"
            )
        self.objectness = bool(self.extra.get("objectness", False))
        self.transposed = bool(self.extra.get("transposed", False))
        self.iou_threshold = float(self.extra.get("iou_threshold", 0.45))
        shape = manifest.input.shape
        self.in_w, self.in_h = (shape[2], shape[1]) if len(shape) == 4 else (1, 1)

    def __call__(self, outputs: Outputs, transform: FrameTransform | None) -> list[Detection]:
        y = outputs[OutputRole.YOLO]
        rows = y.reshape(y.shape[-2], y.shape[-1])
        if self.transposed:
            rows = rows.T
        first = 5 if self.objectness else 4
        cls_scores = rows[:, first:]
        if self.objectness:
            cls_scores = cls_scores * rows[:, 4:5]
        best = np.argmax(cls_scores, axis=1)
        best_score = cls_scores[np.arange(len(rows)), best]
        cand = np.flatnonzero(best_score >= self.score_threshold)
        if cand.size > 1000:
            cand = cand[np.argsort(-best_score[cand])[:1000]]
        b = rows[cand, :4].astype(np.float32)
        if self.box_format == "cxcywh":
            b = np.stack(
                [
                    b[:, 0] - b[:, 2] / 2,
                    b[:, 1] - b[:, 3] / 2,
                    b[:, 0] + b[:, 2] / 2,
                    b[:, 1] + b[:, 3] / 2,
                ],
                1,
            )
        if self.units == "pixels":
            b = (b / np.asarray([self.in_w, self.in_h, self.in_w, self.in_h], np.float32)).astype(
                np.float32
            )
        b = np.clip(b, 0.0, 1.0)
        keep = batched_nms(b, best_score[cand], best[cand], self.iou_threshold, self.max_detections)
        return self._detections(b[keep], best[cand][keep], best_score[cand][keep], transform)


class ClassificationDecoder(OutputDecoder):
    """Top-k classes of a probabilities (or logits, softmaxed here) output; no boxes."""

    decoder = Decoder.CLASSIFICATION
    roles = ()

    def __init__(self, manifest: Manifest, **kw: Any) -> None:
        super().__init__(manifest, **kw)
        roles = {o.role for o in manifest.outputs}
        if OutputRole.PROBABILITIES in roles:
            self.role, self.activation = OutputRole.PROBABILITIES, ACTIVATIONS["none"]
        elif OutputRole.LOGITS in roles:
            act = str(self.extra.get("activation", "softmax"))
            if act not in ACTIVATIONS:
                raise DecoderError(
                    f"classification: activation must be one of {', '.join(ACTIVATIONS)}"
                )
            self.role, self.activation = OutputRole.LOGITS, ACTIVATIONS[act]
        else:
            raise DecoderError("classification needs an output with role probabilities or logits")

    @property
    def needed(self) -> tuple[OutputRole, ...]:
        return (self.role,)

    def __call__(self, outputs: Outputs, transform: FrameTransform | None) -> list[Detection]:
        p = self.activation(outputs[self.role].reshape(-1).astype(np.float32))
        k = min(self.top_k, len(p))
        top = np.argsort(-p, kind="stable")[:k]
        top = top[np.isfinite(p[top])]  # NaN sorts last, but top-k can still reach it
        return [Detection(int(i), self.label(int(i)), float(p[i])) for i in top]


DECODERS: dict[Decoder, type[OutputDecoder]] = {
    cls.decoder: cls
    for cls in (SSDPostprocessDecoder, SSDRawDecoder, YoloDecoder, ClassificationDecoder)
}


def needed_roles(decoder: OutputDecoder) -> tuple[OutputRole, ...]:
    """The output roles a decoder reads; only those tensors are copied out of the interpreter."""
    return getattr(decoder, "needed", decoder.roles)


def make_decoder(
    manifest: Manifest, score_threshold: float = 0.5, max_detections: int = 100, top_k: int = 5
) -> OutputDecoder:
    """The decoder the manifest names. A manifest that names none the agent serves is refused."""
    cls = DECODERS.get(manifest.decoder)
    if cls is None:
        served = ", ".join(d.value for d in DECODERS)
        raise DecoderError(
            f"bundle decoder {manifest.decoder.value!r} is not served by the agent (serves {served})"
        )
    return cls(
        manifest, score_threshold=score_threshold, max_detections=max_detections, top_k=top_k
    )
