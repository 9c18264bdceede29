"""ssd_raw: box encodings against anchors recorded in the manifest, decoded here, then per-class NMS."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from agent.bundle.manifest import Decoder, Manifest, OutputRole
from agent.decoders.base import (
    ACTIVATIONS,
    DecoderError,
    Detection,
    OutputDecoder,
    Outputs,
    check_output,
)
from agent.decoders.raw_boxes import BoxCoding, anchors_from, box_coding
from agent.geometry.boxes import batched_nms
from agent.geometry.letterbox import FrameTransform

logger = logging.getLogger(__name__)

MAX_CANDIDATES = 1000  # best-scoring anchors decoded per frame before NMS


class SSDRawDecoder(OutputDecoder):
    """raw_boxes [1, A, 4 + E] against A anchors, raw_scores [1, A, C], then per-class NMS.

    extra (agent/decoders/raw_boxes.py has the details): box_coding yxhw|xywh; box_scales;
    box_units anchor|input (xywh); extra_values (keypoint values per box, published with each
    detection as x, y pairs); anchors, anchor_grid, anchor_generator or anchor_data;
    score_activation none|sigmoid|softmax (default sigmoid); background_class (class 0 of the
    scores is background; default true); iou_threshold (default 0.5).
    """

    decoder = Decoder.SSD_RAW
    roles = (OutputRole.RAW_BOXES, OutputRole.RAW_SCORES)

    def __init__(self, manifest: Manifest, **kw: Any) -> None:
        super().__init__(manifest, **kw)
        shape = manifest.input.shape
        in_w, in_h = (shape[2], shape[1]) if len(shape) == 4 else (1, 1)
        self.coding: BoxCoding = box_coding(self.extra, in_w, in_h)
        self.anchors = anchors_from(self.extra)
        act = str(self.extra.get("score_activation", "sigmoid"))
        if act not in ACTIVATIONS:
            raise DecoderError(
                f"ssd_raw: score_activation must be one of {', '.join(ACTIVATIONS)}, got {act!r}"
            )
        self.activation = ACTIVATIONS[act]
        self.background = bool(self.extra.get("background_class", True))
        self.iou_threshold = float(self.extra.get("iou_threshold", 0.5))
        self._check_shapes(manifest)

    def _check_shapes(self, manifest: Manifest) -> None:
        """The outputs fit the coding, the anchors and the classes, or the bundle is refused."""
        boxes, scores = (
            manifest.output(OutputRole.RAW_BOXES),
            manifest.output(OutputRole.RAW_SCORES),
        )
        coding, width = self.coding.coding, boxes.shape[-1]
        have = f" with extra_values {self.coding.extra_values}" if self.coding.extra_values else ""
        fix = f" (or set extra_values: {width - 4})" if width > 4 and (width - 4) % 2 == 0 else ""
        check_output("ssd_raw", boxes, rank=3)
        check_output(
            "ssd_raw",
            boxes,
            last=self.coding.width,
            hint=f"box coding {coding}{have} needs {self.coding.width} values per anchor{fix}",
        )
        check_output("ssd_raw", scores, rank=3)
        count = len(self.anchors)
        for spec in (boxes, scores):
            if spec.shape[1] != count:
                raise DecoderError(
                    f"{spec.role.value} is {spec.shape}; the manifest's anchors number {count}"
                )
        classes = scores.shape[-1] - (1 if self.background else 0)
        if classes < 1:
            raise DecoderError(
                f"raw_scores is {scores.shape}; with background_class true it needs 2 or more "
                "scores per anchor (or set background_class: false)"
            )
        self.warn_label_count(scores, classes, " (after the background)" if self.background else "")

    def __call__(self, outputs: Outputs, transform: FrameTransform | None) -> list[Detection]:
        enc = outputs[OutputRole.RAW_BOXES].reshape(len(self.anchors), self.coding.width)
        scores = self.activation(outputs[OutputRole.RAW_SCORES].reshape(len(enc), -1))
        if self.background:
            scores = scores[:, 1:]
        best = np.argmax(scores, axis=1)
        best_score = scores[np.arange(len(scores)), best]
        cand = np.flatnonzero(best_score >= self.score_threshold)
        if cand.size > MAX_CANDIDATES:
            cand = cand[np.argsort(-best_score[cand], kind="stable")[:MAX_CANDIDATES]]
        boxes, points = self.coding.decode(enc[cand], self.anchors[cand])
        boxes = np.clip(boxes, 0.0, 1.0)
        keep = batched_nms(
            boxes, best_score[cand], best[cand], self.iou_threshold, self.max_detections
        )
        return self._detections(
            boxes[keep],
            best[cand][keep],
            best_score[cand][keep],
            transform,
            None if points is None else points[keep],
        )
