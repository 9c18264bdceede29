"""ssd_raw: box encodings against anchors recorded in the manifest, decoded here, then per-class NMS."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import astuple, fields
from typing import Any

import numpy as np

from agent.bundle.manifest import Decoder, Manifest, OutputRole
from agent.decoders.base import ACTIVATIONS, DecoderError, Detection, OutputDecoder, Outputs
from agent.geometry.anchors import grid_anchors
from agent.geometry.boxes import BoxCoder, batched_nms, decode, swap_xy
from agent.geometry.letterbox import FrameTransform

logger = logging.getLogger(__name__)


class SSDRawDecoder(OutputDecoder):
    """Box encodings (ty, tx, th, tw) against anchors from manifest.extra, then per-class NMS.

    extra: anchors [[cy, cx, h, w], ...] or a grid spec {...} (under anchors or anchor_grid);
    box_scales [y, x, h, w] or box_coder {y_scale, x_scale, h_scale, w_scale} (default 10, 10,
    5, 5); score_activation none|sigmoid|softmax; background_class (class 0 is background);
    iou_threshold (default 0.5).
    """

    decoder = Decoder.SSD_RAW
    roles = (OutputRole.RAW_BOXES, OutputRole.RAW_SCORES)

    def __init__(self, manifest: Manifest, **kw: Any) -> None:
        super().__init__(manifest, **kw)
        given = self.extra.get("anchors", self.extra.get("anchor_grid"))
        if isinstance(given, Mapping):  # a grid spec, as the converter's zoo records it
            try:
                self.anchors = grid_anchors(given)
            except (ValueError, KeyError, TypeError) as exc:
                raise DecoderError(f"ssd_raw: bad anchor grid: {exc}") from exc
        elif given is not None:
            self.anchors = np.asarray(given, np.float32).reshape(-1, 4)
        else:
            raise DecoderError("ssd_raw needs manifest.extra.anchors or manifest.extra.anchor_grid")
        count = manifest.output(OutputRole.RAW_BOXES).shape[-2]
        if len(self.anchors) != count:
            raise DecoderError(
                f"ssd_raw: {len(self.anchors)} anchors but the model has {count} boxes"
            )
        self.coder = box_coder(self.extra)
        self.box_scales = np.asarray(astuple(self.coder), np.float32)
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
        return swap_xy(decode(enc, a, self.coder))

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


def box_coder(extra: Mapping[str, Any]) -> BoxCoder:
    """The box coder of manifest.extra: box_scales [y, x, h, w], or a box_coder mapping by name;
    any scale not given is the usual SSD one."""
    if "box_scales" in extra:
        scales = [float(v) for v in extra["box_scales"]]
        if len(scales) != 4:
            raise DecoderError(
                f"ssd_raw: box_scales needs 4 values (y, x, h, w), got {len(scales)}"
            )
        return BoxCoder(*scales)
    given = extra.get("box_coder") or {}
    return BoxCoder(**{f.name: float(given[f.name]) for f in fields(BoxCoder) if f.name in given})
