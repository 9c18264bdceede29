"""yolo: [1, N, 4 + C] rows of box then class scores, then per-class NMS."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from agent.bundle.manifest import Decoder, Manifest, OutputRole
from agent.decoders.base import DecoderError, Detection, OutputDecoder, Outputs, check_output
from agent.geometry.boxes import batched_nms
from agent.geometry.letterbox import FrameTransform

logger = logging.getLogger(__name__)


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
        self._check_shape(manifest)

    def _check_shape(self, manifest: Manifest) -> None:
        """[1, N, 4 + C] (or [1, 4 + C, N] transposed) with C >= 1; a labels count that is not C
        is only warned about (label files often name a background class too)."""
        spec = manifest.output(OutputRole.YOLO)
        check_output("yolo", spec, rank=3)
        axis = 1 if self.transposed else 2
        values = spec.shape[axis]
        first = 5 if self.objectness else 4
        layout = "[1, 4 + C, N] (transposed: true)" if self.transposed else "[1, N, 4 + C]"
        other = " (or set transposed: %s)" % ("false" if self.transposed else "true")
        if values <= first:
            raise DecoderError(
                f"yolo is {spec.shape}; as {layout} that is {values} values per box, and it "
                f"needs {first} box values and at least one class score{other}"
            )
        classes = values - first
        named = len(self.labels) - self.label_offset
        if named == classes - 1 and not self.objectness:
            flip = "false" if self.transposed else "true"
            other = (
                " (or set objectness: true, for a 5th column that scores any object; "
                f"or set transposed: {flip})"
            )
        if self.labels and named != classes:
            logger.warning(
                "yolo is %s; as %s that is %d classes, the labels name %d%s",
                spec.shape, layout, classes, named, other,
            )  # fmt: skip

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
