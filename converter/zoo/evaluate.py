"""mAP of a detector on a COCO-style folder: a bundle through LiteRT, or a Keras model in float."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.bundle.loading import load_bundle
from agent.bundle.manifest import ColorOrder, Decoder, OutputRole
from agent.errors import EdgegapError
from agent.geometry.boxes import swap_xy
from agent.geometry.letterbox import FrameTransform, resize_image
from agent.preprocess import Normalizer
from agent.runtime import open_model
from converter.evaluation import Detections, MapResult, coco_map
from converter.tasks.detection_folder import DetectionFolder
from converter.tasks.detector_config import read_sidecar
from converter.tasks.ssd import detections_from_raw, read_postprocessed

logger = logging.getLogger(__name__)


class EvalError(EdgegapError, ValueError):
    """The model cannot be evaluated as a detector."""


@dataclass
class EvalResult:
    model: str
    kind: str
    result: MapResult


def _remap(
    dets: list[Detections], model_labels: list[str], data_labels: list[str]
) -> list[Detections]:
    """Model class indices -> dataset class indices by name; classes the data lacks are dropped."""
    if not model_labels:
        return dets
    table = np.array(
        [data_labels.index(n) if n in data_labels else -1 for n in model_labels], np.int32
    )
    out = []
    for d in dets:
        valid = (d.classes >= 0) & (d.classes < len(table))
        cls = np.where(valid, table[np.clip(d.classes, 0, len(table) - 1)], -1)
        keep = cls >= 0
        out.append(Detections(d.boxes[keep], d.scores[keep], cls[keep]))
    return out


def evaluate_bundle(
    bundle_dir: Path, folder: DetectionFolder, threads: int = 2, limit: int = 0
) -> EvalResult:
    """Run a bundle's model.tflite over the folder, reading outputs by the manifest's roles."""
    bundle = load_bundle(Path(bundle_dir))
    m = bundle.manifest
    if m.decoder is not Decoder.SSD_POSTPROCESS:
        raise EvalError(
            f"{bundle_dir}: eval reads detectors with {Decoder.SSD_POSTPROCESS.value} outputs, this bundle's decoder is {m.decoder.value}"
        )
    try:
        roles = {
            r: m.output(r).index
            for r in (OutputRole.BOXES, OutputRole.CLASSES, OutputRole.SCORES, OutputRole.COUNT)
        }
    except KeyError as exc:
        raise EvalError(f"{bundle_dir}: {exc.args[0]}") from exc
    model = open_model(bundle.model_bytes(), threads)
    shape = m.input.shape
    norm = Normalizer.from_spec(m.input)
    n = _count(folder, limit)
    dets = []
    for i in range(n):
        image = folder.image(i)
        if m.input.color_order is ColorOrder.BGR:
            image = image[..., ::-1]
        elif m.input.color_order is ColorOrder.GRAY:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
        pixels, t = resize_image(image, (shape[1], shape[2]), m.input.resize)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        model.set_input(norm(pixels))
        model.invoke()
        det = read_postprocessed(model, roles)
        dets.append(on_image(det, t))
    dets = _remap(dets, list(m.labels), folder.labels)
    kind = f"{m.input.dtype} TFLite ({model.backend} {model.backend_version})"
    return EvalResult(str(bundle_dir), kind, _score(folder, dets, n))


def on_image(det: Detections, t: FrameTransform) -> Detections:
    """Detections with yxyx boxes on the model input -> yxyx in [0, 1] of the image the
    transform came from, mapped back as the agent maps them."""
    return Detections(swap_xy(t.to_source_fraction(swap_xy(det.boxes))), det.scores, det.classes)


def evaluate_keras_file(model_path: Path, folder: DetectionFolder, limit: int = 0) -> EvalResult:
    """Float mAP of a .keras detector with its sidecar, decoded like the exported op decodes."""
    import keras

    from converter.zoo.detector import normalize

    cfg, _ = read_sidecar(Path(model_path))
    try:
        model = keras.models.load_model(model_path, compile=False)
    except (ValueError, OSError) as exc:
        raise EvalError(f"cannot load {model_path}: {exc}") from exc
    n = _count(folder, limit)
    size = (cfg.input_size, cfg.input_size)
    dets: list[Detections] = []
    for start in range(0, n, 32):
        batch = np.stack(
            [resize_image(folder.image(i), size)[0] for i in range(start, min(n, start + 32))]
        )
        box, logits = model.predict(normalize(batch, cfg), verbose=0)
        dets += detections_from_raw(np.asarray(box), np.asarray(logits), cfg)
    dets = _remap(dets, list(cfg.classes), folder.labels)
    return EvalResult(str(model_path), "float32 Keras", _score(folder, dets, n))


def _count(folder: DetectionFolder, limit: int) -> int:
    if len(folder) == 0:
        raise EvalError(f"{folder.path} has no images")
    return min(limit, len(folder)) if limit > 0 else len(folder)


def _score(folder: DetectionFolder, dets: list[Detections], n: int) -> MapResult:
    return coco_map(folder.boxes[:n], folder.classes[:n], dets, len(folder.labels))
