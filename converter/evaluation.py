"""COCO-style detection metrics: mAP@0.5 and mAP@0.5:0.95 with 101-point interpolated precision.

This follows the COCO evaluation protocol (greedy matching by score per image and class, at most
100 detections per image and class, precision made monotone, sampled at 101 recall points, mean
over the classes that have ground truth); tests/test_detector.py checks it against pycocotools.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100


@dataclass(frozen=True)
class Detections:
    """One image's detections: corner boxes (ymin, xmin, ymax, xmax), scores, class indices."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))


@dataclass
class MapResult:
    map50: float
    map50_95: float
    per_class_ap50: dict[int, float] = field(default_factory=dict)
    images: int = 0


def _iou(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """IoU of detections (n, 4) against ground truth (m, 4), corner boxes."""
    if len(d) == 0 or len(g) == 0:
        return np.zeros((len(d), len(g)))
    d, g = d.astype(np.float64)[:, None, :], g.astype(np.float64)[None, :, :]
    ih = np.clip(np.minimum(d[..., 2], g[..., 2]) - np.maximum(d[..., 0], g[..., 0]), 0, None)
    iw = np.clip(np.minimum(d[..., 3], g[..., 3]) - np.maximum(d[..., 1], g[..., 1]), 0, None)
    inter = ih * iw
    union = (
        (d[..., 2] - d[..., 0]) * (d[..., 3] - d[..., 1])
        + (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
        - inter
    )
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _match(ious: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy matching in score order; each detection takes the best unmatched ground truth."""
    matched_gt = np.zeros(ious.shape[1], bool)
    tp = np.zeros(ious.shape[0], bool)
    for di in range(ious.shape[0]):
        best, best_iou = -1, min(threshold, 1 - 1e-10)
        for gi in range(ious.shape[1]):
            if matched_gt[gi] or ious[di, gi] < best_iou:
                continue
            best, best_iou = gi, ious[di, gi]
        if best >= 0:
            matched_gt[best] = True
            tp[di] = True
    return tp


def _average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    order = np.argsort(-scores, kind="mergesort")
    tp = tp[order]
    tps = np.cumsum(tp).astype(np.float64)
    fps = np.cumsum(~tp).astype(np.float64)
    recall = tps / n_gt
    precision = tps / (tps + fps + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.array([precision[i] if i < len(precision) else 0.0 for i in idx])
    return float(q.mean())


def coco_map(
    gt_boxes: Sequence[np.ndarray],
    gt_classes: Sequence[np.ndarray],
    detections: Sequence[Detections],
    num_classes: int,
) -> MapResult:
    """mAP over images; ground truth and detections per image, in the same box units."""
    if not (len(gt_boxes) == len(gt_classes) == len(detections)):
        raise ValueError("ground truth and detections must cover the same images")
    aps = np.full((len(IOU_THRESHOLDS), num_classes), np.nan)
    for c in range(num_classes):
        n_gt = 0
        scores: list[np.ndarray] = []
        tps: list[list[np.ndarray]] = [[] for _ in IOU_THRESHOLDS]
        for gb, gc, det in zip(gt_boxes, gt_classes, detections, strict=True):
            g = gb[gc == c]
            sel = det.classes == c
            order = np.argsort(-det.scores[sel], kind="mergesort")[:MAX_DETECTIONS]
            d, s = det.boxes[sel][order], det.scores[sel][order]
            n_gt += len(g)
            scores.append(s)
            ious = _iou(d, g)
            for t, thr in enumerate(IOU_THRESHOLDS):
                tps[t].append(_match(ious, float(thr)))
        if n_gt == 0:
            continue
        all_scores = np.concatenate(scores) if scores else np.zeros(0)
        for t in range(len(IOU_THRESHOLDS)):
            aps[t, c] = _average_precision(all_scores, np.concatenate(tps[t]).astype(bool), n_gt)
    valid = ~np.isnan(aps[0])
    if not valid.any():
        return MapResult(float("nan"), float("nan"), {}, len(detections))
    return MapResult(
        map50=float(aps[0, valid].mean()),
        map50_95=float(aps[:, valid].mean()),
        per_class_ap50={c: float(aps[0, c]) for c in range(num_classes) if valid[c]},
        images=len(detections),
    )
