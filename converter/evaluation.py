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

from converter.intervals import BOOTSTRAP_ROUNDS, percentile95, resamples

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


@dataclass(frozen=True)
class ClassMatch:
    """One image's detections of one class, matched against its ground truth of that class."""

    n_gt: int
    scores: np.ndarray  # (detections,)
    tp: np.ndarray  # (len(IOU_THRESHOLDS), detections) bool


Matches = list[list[ClassMatch]]  # [image][class]


def match(
    gt_boxes: Sequence[np.ndarray],
    gt_classes: Sequence[np.ndarray],
    detections: Sequence[Detections],
    num_classes: int,
) -> Matches:
    """Per image and class: the detections in score order (at most MAX_DETECTIONS), which of them
    match a ground-truth box at each IoU threshold, and how many ground-truth boxes there are."""
    if not (len(gt_boxes) == len(gt_classes) == len(detections)):
        raise ValueError("ground truth and detections must cover the same images")
    out: Matches = []
    for gb, gc, det in zip(gt_boxes, gt_classes, detections, strict=True):
        row = []
        for c in range(num_classes):
            g = gb[gc == c]
            sel = det.classes == c
            order = np.argsort(-det.scores[sel], kind="mergesort")[:MAX_DETECTIONS]
            ious = _iou(det.boxes[sel][order], g)
            tp = np.array([_match(ious, float(t)) for t in IOU_THRESHOLDS]).reshape(
                len(IOU_THRESHOLDS), len(order)
            )
            row.append(ClassMatch(len(g), det.scores[sel][order], tp))
        out.append(row)
    return out


def map_of(
    matches: Matches, images: Sequence[int] | np.ndarray | None = None, thresholds: int = 0
) -> MapResult:
    """mAP over the given images (all by default; an image may repeat, as in a bootstrap sample),
    from the first `thresholds` IoU thresholds (0: all ten; 1: only mAP@0.5 is meaningful)."""
    picked = [matches[i] for i in images] if images is not None else matches
    n_t = thresholds or len(IOU_THRESHOLDS)
    num_classes = len(picked[0]) if picked else 0
    aps = np.full((n_t, num_classes), np.nan)
    for c in range(num_classes):
        n_gt = sum(m[c].n_gt for m in picked)
        if n_gt == 0:
            continue
        scores = np.concatenate([m[c].scores for m in picked])
        for t in range(n_t):
            tp = np.concatenate([m[c].tp[t] for m in picked]).astype(bool)
            aps[t, c] = _average_precision(scores, tp, n_gt)
    valid = ~np.isnan(aps[0]) if num_classes else np.zeros(0, bool)
    if not valid.any():
        return MapResult(float("nan"), float("nan"), {}, len(picked))
    return MapResult(
        map50=float(aps[0, valid].mean()),
        map50_95=float(aps[:, valid].mean()),
        per_class_ap50={c: float(aps[0, c]) for c in range(num_classes) if valid[c]},
        images=len(picked),
    )


def coco_map(
    gt_boxes: Sequence[np.ndarray],
    gt_classes: Sequence[np.ndarray],
    detections: Sequence[Detections],
    num_classes: int,
) -> MapResult:
    """mAP over images; ground truth and detections per image, in the same box units."""
    return map_of(match(gt_boxes, gt_classes, detections, num_classes))


def map50_interval(
    reference: Matches, candidate: Matches, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> dict[str, list[float]]:
    """95% percentile-bootstrap intervals over images of the reference's and the candidate's
    mAP@0.5 and of the candidate's drop: both are scored on the same resampled images, so the
    drop's interval is the paired one (narrower than the two intervals side by side)."""
    n = len(candidate)
    if n == 0 or len(reference) != n:
        return {}
    samples: list[tuple[float, float]] = []
    for idx in resamples(n, rounds, seed):
        r, c = map_of(reference, idx, 1).map50, map_of(candidate, idx, 1).map50
        if np.isfinite(r) and np.isfinite(c):
            samples.append((r, c))
    if not samples:
        return {}
    ref, cand = np.array(samples).T
    return {
        "float": percentile95(ref),
        "map50": percentile95(cand),
        "drop": percentile95(ref - cand),
    }
