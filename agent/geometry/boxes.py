"""Boxes: the SSD box coder, corner conversions, IoU and non-maximum suppression.

Anchors are (ycenter, xcenter, h, w) in [0, 1]. Box encodings are the usual SSD ones:
ty = (yc - ya) / ha * y_scale, tx likewise, th = log(h / ha) * h_scale, tw likewise. Corner
boxes are (ymin, xmin, ymax, xmax), the order of the SSD post-process op and of COCO-style
ground truth here; swap_xy() turns them into (xmin, ymin, xmax, ymax) and back. IoU and NMS
work on either order, as long as all boxes share it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

_SWAP_XY = np.array([1, 0, 3, 2])


@dataclass(frozen=True)
class BoxCoder:
    y_scale: float = 10.0
    x_scale: float = 10.0
    h_scale: float = 5.0
    w_scale: float = 5.0


def swap_xy(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] yxyx -> xyxy (or xyxy -> yxyx): a copy with the axes swapped."""
    return boxes[:, _SWAP_XY]


def to_corners(anchors: np.ndarray) -> np.ndarray:
    """(ycenter, xcenter, h, w) -> (ymin, xmin, ymax, xmax)."""
    yc, xc, h, w = anchors.T
    return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1)


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
    """Encodings (A, 4) -> corner boxes (A, 4) yxyx, exactly as the TFLite op decodes them."""
    ya, xa, ha, wa = anchors.astype(np.float64).T
    e = enc.astype(np.float64)
    yc = e[:, 0] / coder.y_scale * ha + ya
    xc = e[:, 1] / coder.x_scale * wa + xa
    hh = 0.5 * np.exp(e[:, 2] / coder.h_scale) * ha
    hw = 0.5 * np.exp(e[:, 3] / coder.w_scale) * wa
    return np.stack([yc - hh, xc - hw, yc + hh, xc + hw], axis=1).astype(np.float32)


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


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Greedy non-maximum suppression of corner boxes [N, 4]: a box goes when its IoU with a
    better kept one is above iou_threshold. Returns kept indices, best first (ties in order)."""
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
