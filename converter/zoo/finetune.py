"""Fine-tuning the detector with its own training loss: anchor-matched targets and the task loss.

Used when a pruned detector is fine-tuned on labelled images (`edgegap prune --data DIR`,
benchmarks/pruning.py): `converter.pruning.prune(..., labels=detection_targets(...),
task_loss=detection_task_loss, distill_loss=detection_distill_loss())`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.geometry.anchors import generate_anchors
from converter.tasks.detector_config import DetectorConfig
from converter.zoo.targets import match

logger = logging.getLogger(__name__)


def detection_targets(
    cfg: DetectorConfig, boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Training targets for a batch of images, as the detector was trained: box targets
    (N, A, 5) and class targets (N, A, C + 1), one `anchors.match` per image."""
    if len(boxes) != len(classes):
        raise ValueError(f"{len(boxes)} box arrays but {len(classes)} class arrays")
    anchors = generate_anchors(cfg.anchors)
    coder = cfg.nms.coder
    pairs = [
        match(anchors, b, c, cfg.num_classes, coder) for b, c in zip(boxes, classes, strict=True)
    ]
    return [np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])]


def detection_task_loss(outs: list[Any], y: list[Any]) -> Any:
    """The detector's own training loss: smooth-L1 boxes plus sigmoid focal classes."""
    from converter.zoo.detector import box_loss, focal_loss

    return box_loss(y[0], outs[0]) + focal_loss(y[1], outs[1])
