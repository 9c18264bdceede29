"""Pseudo-labelling captures with a float teacher (`edgegap relabel`).

The teacher sees each capture after an automatic colour and exposure correction (grey-world
white balance, then a 1-99.5 percentile stretch), which a device camera does not do on the
frame path but a host can afford: on the night-time domain b of the generated set this lifts the
reference detector from mAP@0.5 0.41 to 0.61 (150 test images). The boxes are the same for
the raw capture, which is what the student is trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.refresh.captures import REVIEWED, CaptureSet, _read_rgb, read_captures
from converter.tasks.detection_folder import DatasetError

logger = logging.getLogger(__name__)

KEEP_SCORE = 0.5  # a teacher detection at or above this is a label
REVIEW_SCORE = 0.3  # between this and KEEP_SCORE it is uncertain: ignored, image marked for review


class TeacherError(DatasetError):
    """A teacher model that is missing or is not a detector."""


@dataclass
class RelabelResult:
    images: int
    confident: int  # images whose every detection was confident
    review: int  # images with uncertain detections
    reviewed: int  # images a person had reviewed, kept as they were
    boxes: int
    uncertain: int
    annotations: Path


def enhance(image: np.ndarray) -> np.ndarray:
    """Grey-world white balance and a percentile contrast stretch, uint8 RGB in and out."""
    x = image.astype(np.float32)
    mean = x.reshape(-1, 3).mean(axis=0) + 1e-3
    x = x * (mean.mean() / mean)
    lo, hi = np.percentile(x, 1.0), np.percentile(x, 99.5)
    x = (x - lo) / max(float(hi - lo), 1.0) * 255.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def load_teacher(path: Path) -> tuple[Any, Any]:
    """The teacher's Keras model and its detector config; TeacherError with one line if not."""
    import keras

    from converter.tasks.detector_config import read_sidecar

    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"teacher model not found: {path}")
    cfg, _ = read_sidecar(path)
    try:
        model = keras.models.load_model(path, compile=False)
    except (ValueError, OSError) as exc:
        raise TeacherError(f"cannot load teacher {path}: {exc}") from exc
    return model, cfg


def _detect(model: Any, cfg: Any, images: list[np.ndarray], corrected: bool) -> list[Any]:
    from agent.geometry.letterbox import resize_image
    from converter.tasks.ssd import detections_from_raw
    from converter.zoo.detector import normalize

    size = (cfg.input_size, cfg.input_size)
    x = np.stack([resize_image(enhance(i) if corrected else i, size)[0] for i in images])
    box, logits = model.predict(normalize(x, cfg), batch_size=16, verbose=0)
    return detections_from_raw(np.asarray(box), np.asarray(logits), cfg)


def _annotations(
    image_id: int, det: Any, h: int, w: int, review: float, keep: float
) -> list[dict[str, Any]]:
    out = []
    for (y0, x0, y1, x1), score, cls in zip(det.boxes, det.scores, det.classes, strict=True):
        if score < review:
            continue
        bx, by = float(x0) * w, float(y0) * h
        bw, bh = (float(x1) - float(x0)) * w, (float(y1) - float(y0)) * h
        out.append({
            "image_id": image_id, "category_id": int(cls) + 1, "score": round(float(score), 3),
            "bbox": [round(bx, 2), round(by, 2), round(bw, 2), round(bh, 2)],
            "area": round(bw * bh, 2), "iscrowd": 0 if score >= keep else 1,
        })  # fmt: skip
    return out


def relabel(
    folder: Path,
    teacher: Path,
    keep: float = KEEP_SCORE,
    review: float = REVIEW_SCORE,
    corrected: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> RelabelResult:
    """Label every capture of folder with the teacher's detections and write annotations.json.
    Images a person reviewed keep their annotations; the others are labelled afresh."""
    if not 0 < review <= keep <= 1:
        raise ValueError(f"need 0 < review ({review}) <= keep ({keep}) <= 1")
    model, cfg = load_teacher(teacher)  # before reading anything: a missing teacher fails first
    captures = read_captures(folder)
    reviewed = {int(e["id"]) for e in captures.images if _is_reviewed(e)}
    kept = [a for a in captures.doc["annotations"] if int(a["image_id"]) in reviewed]
    result = RelabelResult(len(captures.images), 0, 0, 0, 0, 0, captures.path)
    entries = captures.images
    for start in range(0, len(entries), 32):
        batch = entries[start : start + 32]
        todo = [e for e in batch if not _is_reviewed(e)]
        result.reviewed += len(batch) - len(todo)
        images = [_read_rgb(captures.file(e)) for e in todo]
        dets = _detect(model, cfg, images, corrected) if images else []
        for entry, image, det in zip(todo, images, dets, strict=True):
            h, w = image.shape[:2]
            anns = _annotations(int(entry["id"]), det, h, w, review, keep)
            uncertain = sum(a["iscrowd"] for a in anns)
            entry.update(height=h, width=w)
            entry["label"] = {"source": "teacher", "teacher": Path(teacher).name,
                              "status": "review" if uncertain else "confident"}  # fmt: skip
            kept += anns
            result.boxes += len(anns) - uncertain
            result.uncertain += uncertain
            result.review += bool(uncertain)
            result.confident += not uncertain
        if on_batch is not None:
            on_batch(len(batch))
    _finish(captures, kept, list(cfg.classes))
    result.annotations = captures.write()
    return result


def _is_reviewed(entry: dict[str, Any]) -> bool:
    label = entry.get("label")
    return isinstance(label, dict) and label.get("status") == REVIEWED


def _finish(captures: CaptureSet, annotations: list[dict[str, Any]], classes: list[str]) -> None:
    """Number the annotations and name the teacher's classes as categories (ids from 1). The
    folder's own categories (a collector's: the device's labels seen so far) are replaced; they
    must agree with the teacher's where reviewed annotations use them."""
    for i, a in enumerate(annotations):
        a["id"] = i + 1
    teacher = {i + 1: n for i, n in enumerate(classes)}
    used = {int(a["category_id"]) for a in annotations if "score" not in a}  # a person's
    for c in captures.doc.get("categories", []):
        cid, name = int(c["id"]), str(c["name"])
        if cid in used and teacher.get(cid) != name:
            raise TeacherError(
                f"{captures.path}: category {cid} is {name!r} in the reviewed annotations, "
                f"{teacher.get(cid)!r} for the teacher ({', '.join(classes)})"
            )
    captures.doc["annotations"] = annotations
    captures.doc["categories"] = [{"id": i, "name": n} for i, n in teacher.items()]
