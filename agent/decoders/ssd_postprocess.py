"""ssd_postprocess: the outputs of TFLite_Detection_PostProcess (boxes, classes, scores, count),
already decoded and suppressed on the model side; boxes are ymin, xmin, ymax, xmax in [0, 1].
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from agent.bundle.manifest import Decoder, Manifest, OutputRole
from agent.decoders.base import BBox, DecoderError, Detection, OutputDecoder, Outputs, check_output
from agent.geometry.boxes import swap_xy
from agent.geometry.letterbox import FrameTransform

logger = logging.getLogger(__name__)

SMALL_N = 32  # rows up to which SSD post-process outputs are read in plain Python


class SSDPostprocessDecoder(OutputDecoder):
    """TFLite_Detection_PostProcess outputs: already decoded and suppressed on the model side."""

    decoder = Decoder.SSD_POSTPROCESS
    roles = (OutputRole.BOXES, OutputRole.CLASSES, OutputRole.SCORES, OutputRole.COUNT)
    small_n = SMALL_N  # an instance may lower it (benchmarks/agent_overhead.py --ab ssd_small)

    def __init__(self, manifest: Manifest, **kw: Any) -> None:
        super().__init__(manifest, **kw)
        boxes = manifest.output(OutputRole.BOXES)
        check_output("ssd_postprocess", boxes, rank=3)
        check_output("ssd_postprocess", boxes, last=4, hint="boxes need 4 values per detection")
        rows = boxes.shape[1]
        for role in (OutputRole.CLASSES, OutputRole.SCORES, OutputRole.COUNT):
            spec = manifest.output(role)
            check_output("ssd_postprocess", spec)
            if role is not OutputRole.COUNT and (len(spec.shape) != 2 or spec.shape[1] != rows):
                raise DecoderError(
                    f"{role.value} is {spec.shape}; boxes is {boxes.shape}, so it needs [1, {rows}]"
                )

    def __call__(self, outputs: Outputs, transform: FrameTransform | None) -> list[Detection]:
        boxes = outputs[OutputRole.BOXES].reshape(-1, 4)
        scores = outputs[OutputRole.SCORES].reshape(-1)
        # max(0, nan) is 0 and min(inf, ...) the row count: a broken count cannot raise here
        n = int(min(max(0, outputs[OutputRole.COUNT].item(0)), len(scores), len(boxes)))
        if n <= self.small_n:
            return self._small(boxes, scores, outputs[OutputRole.CLASSES].reshape(-1), n, transform)
        keep = np.flatnonzero(scores[:n] >= self.score_threshold)
        if not keep.size:  # nothing above threshold: skip the remaining array work
            return []
        if keep.size > 1:
            keep = keep[np.argsort(-scores[keep], kind="stable")]
        keep = keep[: self.max_detections]
        xyxy = np.clip(swap_xy(boxes[keep]), 0.0, 1.0)
        classes = outputs[OutputRole.CLASSES].reshape(-1)[keep]
        return self._detections(xyxy, np.rint(classes), scores[keep], transform)

    def _small(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        n: int,
        transform: FrameTransform | None,
    ) -> list[Detection]:
        """The same answer for the usual handful of rows, in plain Python floats.

        The op emits at most max_detections rows (tens); a dozen NumPy calls on arrays that small
        cost more than the arithmetic, especially on the cold caches a camera-paced frame meets.
        """
        thr = self.score_threshold
        s = scores[:n].tolist()
        keep = [i for i in range(n) if s[i] >= thr]
        if not keep:
            return []
        keep.sort(key=s.__getitem__, reverse=True)  # stable, like the array path's argsort
        del keep[self.max_detections :]
        rows, cls = boxes[:n].tolist(), classes[:n].tolist()
        mx, my, ax, ay, hx, hy = self._same(transform).xy_map if transform else _IDENTITY
        names, known = self._names, len(self._names)
        out = []
        for i in keep:
            y0, x0, y1, x1 = rows[i]
            y0, x0 = min(max(y0, 0.0), 1.0), min(max(x0, 0.0), 1.0)  # NaN stays NaN
            y1, x1 = min(max(y1, 0.0), 1.0), min(max(x1, 0.0), 1.0)
            if not math.isfinite(s[i] + cls[i] + y0 + x0 + y1 + x1):  # as _detections drops
                continue
            c = round(cls[i])
            box = BBox(
                min(max(x0 * mx + ax, 0.0), hx),
                min(max(y0 * my + ay, 0.0), hy),
                min(max(x1 * mx + ax, 0.0), hx),
                min(max(y1 * my + ay, 0.0), hy),
            )
            out.append(Detection(c, names[c] if 0 <= c < known else self.label(c), s[i], box))
        return out


_IDENTITY = (1.0, 1.0, 0.0, 0.0, 1.0, 1.0)  # no transform: boxes stay normalized
