"""SSD anchors, the standard box coder, anchor matching and a NumPy twin of the TFLite post-process.

Anchors are (ycenter, xcenter, h, w) in [0, 1]. Box encodings are the usual SSD ones:
ty = (yc - ya) / ha * y_scale, tx likewise, th = log(h / ha) * h_scale, tw likewise.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnchorConfig:
    """One anchor grid per feature map; per cell, each aspect ratio at the level's first scale,
    then the level's further scales at ratio 1. Order: row, column, anchor (the head's reshape)."""

    feature_maps: tuple[int, ...] = (24, 12, 6)  # strides 8, 16 and 32 of a 192 px input
    scales: tuple[tuple[float, ...], ...] = ((0.1, 0.14), (0.2, 0.28), (0.38, 0.52))
    aspect_ratios: tuple[float, ...] = (1.0, 1.6, 0.6)

    @classmethod
    def for_input(cls, size: int) -> AnchorConfig:
        """The default grid for a square input whose side is a multiple of 32."""
        if size % 32:
            raise ValueError(f"input size {size} is not a multiple of 32")
        return cls(feature_maps=(size // 8, size // 16, size // 32))

    @property
    def per_cell(self) -> int:
        return len(self.aspect_ratios) + len(self.scales[0]) - 1

    @property
    def count(self) -> int:
        return sum(g * g for g in self.feature_maps) * self.per_cell

    def to_dict(self) -> dict[str, object]:
        return {k: [list(v) if isinstance(v, tuple) else v for v in vals] if k == "scales" else list(vals)
                for k, vals in asdict(self).items()}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> AnchorConfig:
        return cls(
            feature_maps=tuple(int(v) for v in d["feature_maps"]),  # type: ignore[attr-defined]
            scales=tuple(tuple(float(s) for s in lvl) for lvl in d["scales"]),  # type: ignore[attr-defined]
            aspect_ratios=tuple(float(v) for v in d["aspect_ratios"]),  # type: ignore[attr-defined]
        )


@dataclass(frozen=True)
class BoxCoder:
    y_scale: float = 10.0
    x_scale: float = 10.0
    h_scale: float = 5.0
    w_scale: float = 5.0


@dataclass(frozen=True)
class NmsConfig:
    """Attributes of the TFLite_Detection_PostProcess op (fast NMS unless use_regular_nms)."""

    max_detections: int = 20
    max_classes_per_detection: int = 1
    nms_score_threshold: float = 0.05
    nms_iou_threshold: float = 0.5
    use_regular_nms: bool = False
    coder: BoxCoder = field(default_factory=BoxCoder)


def generate_anchors(cfg: AnchorConfig) -> np.ndarray:
    """(A, 4) float32 anchors, (ycenter, xcenter, h, w)."""
    if len(cfg.scales) != len(cfg.feature_maps) or len({len(s) for s in cfg.scales}) != 1:
        raise ValueError("need one equally long list of scales per feature map")
    out: list[tuple[float, float, float, float]] = []
    for grid, scales in zip(cfg.feature_maps, cfg.scales, strict=True):
        shapes = [(scales[0] / np.sqrt(r), scales[0] * np.sqrt(r)) for r in cfg.aspect_ratios]
        shapes += [(s, s) for s in scales[1:]]
        centers = (np.arange(grid) + 0.5) / grid
        for yc in centers:
            for xc in centers:
                out.extend((yc, xc, h, w) for h, w in shapes)
    return np.asarray(out, np.float32)


def to_corners(anchors: np.ndarray) -> np.ndarray:
    yc, xc, h, w = anchors.T
    return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every corner box in a (n, 4) against every one in b (m, 4)."""
    a, b = a[:, None, :], b[None, :, :]
    ih = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iw = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ih * iw
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def encode(boxes: np.ndarray, anchors: np.ndarray, coder: BoxCoder) -> np.ndarray:
    """Corner boxes (n, 4) against their anchors (n, 4) -> encodings (n, 4)."""
    h = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)
    w = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    yc, xc = boxes[:, 0] + h / 2, boxes[:, 1] + w / 2
    ya, xa, ha, wa = anchors.T
    return np.stack([
        (yc - ya) / ha * coder.y_scale, (xc - xa) / wa * coder.x_scale,
        np.log(h / ha) * coder.h_scale, np.log(w / wa) * coder.w_scale,
    ], axis=1).astype(np.float32)  # fmt: skip


def decode(enc: np.ndarray, anchors: np.ndarray, coder: BoxCoder) -> np.ndarray:
    """Encodings (A, 4) -> corner boxes (A, 4), exactly as the TFLite op decodes them."""
    ya, xa, ha, wa = anchors.astype(np.float64).T
    e = enc.astype(np.float64)
    yc = e[:, 0] / coder.y_scale * ha + ya
    xc = e[:, 1] / coder.x_scale * wa + xa
    hh = 0.5 * np.exp(e[:, 2] / coder.h_scale) * ha
    hw = 0.5 * np.exp(e[:, 3] / coder.w_scale) * wa
    return np.stack([yc - hh, xc - hw, yc + hh, xc + hw], axis=1).astype(np.float32)


def match(
    anchors: np.ndarray, boxes: np.ndarray, classes: np.ndarray, num_classes: int, coder: BoxCoder,
    pos_iou: float = 0.5, neg_iou: float = 0.4,
) -> tuple[np.ndarray, np.ndarray]:
    """Training targets for one image.

    Returns box targets (A, 5): encodings and a positive flag, and class targets (A, C + 1):
    one-hot classes (all zero for background) and a weight (0 for ignored anchors).
    """
    n = len(anchors)
    box_t = np.zeros((n, 5), np.float32)
    cls_t = np.zeros((n, num_classes + 1), np.float32)
    cls_t[:, -1] = 1.0
    if len(boxes) == 0:
        return box_t, cls_t
    iou = iou_matrix(to_corners(anchors), boxes)  # (A, G)
    best_gt = iou.argmax(axis=1)
    best_iou = iou[np.arange(n), best_gt]
    forced = iou.argmax(axis=0)  # each ground truth keeps at least its best anchor
    best_gt[forced] = np.arange(len(boxes))
    best_iou[forced] = 1.0
    pos = best_iou >= pos_iou
    ignore = (best_iou >= neg_iou) & ~pos
    box_t[pos, :4] = encode(boxes[best_gt[pos]], anchors[pos], coder)
    box_t[pos, 4] = 1.0
    cls_t[pos, classes[best_gt[pos]]] = 1.0
    cls_t[ignore, -1] = 0.0
    return box_t, cls_t


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow for large |x|."""
    return (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float32)))).astype(np.float32)


def postprocess(
    box_enc: np.ndarray, scores: np.ndarray, anchors: np.ndarray, nms: NmsConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The fast-NMS path of TFLite_Detection_PostProcess for one image, in NumPy.

    box_enc (A, 4) encodings, scores (A, C) class scores (already through the sigmoid).
    Returns boxes (M, 4), classes (M,), scores (M,) and the count, padded to max_detections.
    """
    boxes = decode(box_enc, anchors, nms.coder)
    best = scores.max(axis=1)
    label = scores.argmax(axis=1)
    keep = np.nonzero(best >= nms.nms_score_threshold)[0]
    keep = keep[np.argsort(-best[keep], kind="stable")]
    selected: list[int] = []
    active = np.ones(len(keep), bool)
    corners = boxes[keep]
    for i in range(len(keep)):
        if len(selected) >= nms.max_detections:
            break
        if not active[i]:
            continue
        selected.append(int(keep[i]))
        active[i] = False
        rest = np.nonzero(active)[0]
        if rest.size:
            ious = iou_matrix(corners[i : i + 1], corners[rest])[0]
            active[rest[ious > nms.nms_iou_threshold]] = False
    m = nms.max_detections
    out_b = np.zeros((m, 4), np.float32)
    out_c = np.zeros(m, np.float32)
    out_s = np.zeros(m, np.float32)
    k = len(selected)
    out_b[:k] = boxes[selected]
    out_c[:k] = label[selected]
    out_s[:k] = best[selected]
    return out_b, out_c, out_s, k
