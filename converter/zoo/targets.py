"""Training targets of the reference detector: each anchor matched to a ground-truth box.

Anchors and the box coder are agent.geometry's, the same the exported model and the agent use.
"""

from __future__ import annotations

import logging

import numpy as np

from agent.geometry.boxes import BoxCoder, encode, iou_matrix, to_corners

logger = logging.getLogger(__name__)


def match(
    anchors: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    num_classes: int,
    coder: BoxCoder,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
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
