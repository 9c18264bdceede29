"""Run a converted detector (TFLite SSD post-process outputs) over images, for evaluation."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import cv2
import numpy as np

from agent.bundle.manifest import OutputRole
from agent.runtime import LoadedModel, TensorInfo
from converter.evaluation import Detections
from converter.zoo.anchors import generate_anchors, postprocess, sigmoid
from converter.zoo.config import DetectorConfig

logger = logging.getLogger(__name__)


def quantize_input(x: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Normalized float input -> the tensor the interpreter wants (int8/uint8 or float32)."""
    if np.issubdtype(info.dtype, np.integer):
        lo, hi = np.iinfo(info.dtype).min, np.iinfo(info.dtype).max
        return np.clip(np.rint(x / info.scale) + info.zero_point, lo, hi).astype(info.dtype)
    return x.astype(info.dtype)


def read_postprocessed(model: LoadedModel, roles: Mapping[OutputRole, int]) -> Detections:
    """The valid detections of the last invoke, each output found by its tensor index."""
    n = int(round(float(model.get(roles[OutputRole.COUNT]).ravel()[0])))
    boxes = model.get(roles[OutputRole.BOXES]).reshape(-1, 4)[:n].astype(np.float32)
    classes = np.rint(model.get(roles[OutputRole.CLASSES]).reshape(-1)[:n]).astype(np.int32)
    scores = model.get(roles[OutputRole.SCORES]).reshape(-1)[:n].astype(np.float32)
    return Detections(boxes, scores, classes)


def run_postprocessed(model: LoadedModel, x: np.ndarray, roles: Mapping[OutputRole, int]) -> list[Detections]:
    """Detections for each normalized input in x (N, H, W, C)."""
    info = model.inputs[0]
    out = []
    for item in x:
        model.set_input(quantize_input(item[np.newaxis], info))
        model.invoke()
        out.append(read_postprocessed(model, roles))
    return out


def fit_image(image: np.ndarray, size: tuple[int, int], letterbox: bool = False) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Resize RGB pixels to the model's (h, w), bilinear as converter.data does. Returns the pixels
    and the map (sy, sx, oy, ox) from model-normalized boxes to image-normalized ones:
    y_img = (y - oy) * sy."""
    h, w = image.shape[:2]
    th, tw = size
    if not letterbox or (h, w) == (th, tw):
        return cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR), (1.0, 1.0, 0.0, 0.0)
    r = min(th / h, tw / w)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    canvas = np.zeros((th, tw, image.shape[2]), image.dtype)
    top, left = (th - nh) // 2, (tw - nw) // 2
    canvas[top : top + nh, left : left + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, (th / nh, tw / nw, top / th, left / tw)


def unmap(det: Detections, mapping: tuple[float, float, float, float]) -> Detections:
    sy, sx, oy, ox = mapping
    if mapping == (1.0, 1.0, 0.0, 0.0):
        return det
    b = det.boxes.copy()
    b[:, [0, 2]] = (b[:, [0, 2]] - oy) * sy
    b[:, [1, 3]] = (b[:, [1, 3]] - ox) * sx
    return Detections(b, det.scores, det.classes)


def detections_from_raw(box: np.ndarray, logits: np.ndarray, cfg: DetectorConfig) -> list[Detections]:
    """Per image detections from raw outputs (N, A, 4) and (N, A, C), through the NumPy twin
    of the TFLite post-process, with the sidecar's NMS settings."""
    anchors = generate_anchors(cfg.anchors)
    out = []
    for b, lg in zip(box, logits, strict=True):
        boxes, classes, scores, n = postprocess(b, sigmoid(lg), anchors, cfg.nms)
        out.append(Detections(boxes[:n], scores[:n], classes[:n].astype(np.int32)))
    return out
