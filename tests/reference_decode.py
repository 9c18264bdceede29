"""NumPy reference decodes of third-party models' outputs, written from each layout's own
definition (not from the agent's decoders), and the comparison with what the agent published."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import thirdparty_models as T

THRESHOLD = 0.5


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            x0, y0 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            x1, y1 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
            area = lambda b: max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])  # noqa: E731
            union = area(boxes[i]) + area(boxes[j]) - inter
            if union > 0 and inter / union > iou:
                ok = False
                break
        if ok:
            keep.append(int(i))
    return keep


def per_class_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float
) -> list[int]:
    keep: list[int] = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        keep += [int(idx[k]) for k in nms(boxes[idx], scores[idx], iou)]
    return keep


def detections(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, w: int, h: int,
               points: np.ndarray | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Normalized xyxy boxes (clipped) -> source pixels, as the agent publishes them."""
    out = []
    for i in range(len(boxes)):
        b = np.clip(boxes[i], 0, 1) * [w, h, w, h]
        d = {"class_id": int(classes[i]), "score": float(scores[i]), "box": b.tolist()}
        if points is not None:
            d["keypoints"] = np.clip(points[i] * [w, h], 0, [w, h]).ravel().tolist()
        out.append(d)
    return out


def same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    key = lambda d: (-round(d["score"], 4), d["class_id"], round(d["box"][0]), round(d["box"][1]))  # noqa: E731
    got, want = sorted(got, key=key), sorted(want, key=key)
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert g["class_id"] == w["class_id"]
        assert g["score"] == pytest.approx(w["score"], abs=6e-5)
        np.testing.assert_allclose(g["box"], w["box"], atol=0.06)
        if "keypoints" in w:
            np.testing.assert_allclose(g["keypoints"], w["keypoints"], atol=0.06)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def ref_ssd_postprocess(o: dict[str, np.ndarray], w: int, h: int) -> list[dict[str, Any]]:
    n = int(o["num_detections"].ravel()[0])
    scores = o["detection_scores"].reshape(-1)[:n]
    keep = np.flatnonzero(scores >= THRESHOLD)
    yx = o["detection_boxes"].reshape(-1, 4)[keep]
    return detections(
        yx[:, [1, 0, 3, 2]], scores[keep], o["detection_classes"].reshape(-1)[keep], w, h
    )


def ref_raw_xywh(o: dict[str, np.ndarray], w: int, h: int) -> list[dict[str, Any]]:
    """MediaPipe-style: offsets and sizes in input pixels against fixed-size anchors."""
    anchors = T.raw_anchors()  # x_center, y_center, w, h
    reg = o["output_0"].reshape(len(anchors), -1)  # regressors
    scores = sigmoid(o["output_1"].reshape(-1))  # classificators, one class, no background
    xc = anchors[:, 0] + reg[:, 0] / T.SIZE
    yc = anchors[:, 1] + reg[:, 1] / T.SIZE
    bw, bh = reg[:, 2] / T.SIZE, reg[:, 3] / T.SIZE
    boxes = np.stack([xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2], 1)
    kp = reg[:, 4:].reshape(len(reg), -1, 2) / T.SIZE + anchors[:, None, :2]
    cand = np.flatnonzero(scores >= THRESHOLD)
    boxes, kp, scores = np.clip(boxes[cand], 0, 1), kp[cand], scores[cand]
    keep = nms(boxes, scores, 0.5)
    return detections(boxes[keep], scores[keep], np.zeros(len(keep)), w, h, kp[keep])


def ref_yolo_transposed(o: dict[str, np.ndarray], w: int, h: int) -> list[dict[str, Any]]:
    rows = o["output_0"][0].T  # [N, 4 + C]
    cls = np.argmax(rows[:, 4:], 1)
    score = rows[np.arange(len(rows)), 4 + cls]
    cand = np.flatnonzero(score >= THRESHOLD)
    cx, cy, bw, bh = rows[cand, :4].T
    boxes = np.clip(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1), 0, 1)
    keep = per_class_nms(boxes, score[cand], cls[cand], 0.45)
    return detections(boxes[keep], score[cand][keep], cls[cand][keep], w, h)
