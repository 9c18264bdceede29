"""Capture folders: images in the project's COCO-style layout, with or without labels.

A capture folder holds images/ and, usually, annotations.json. Captures from the devices carry
provenance on each image entry and no annotations; `edgegap relabel` adds pseudo-labels to the
same file. An image's "label" entry says where its labels came from:

- {"source": "teacher", "status": "confident"}: every teacher detection was confident;
- {"source": "teacher", "status": "review"}: some detections were uncertain; they are written as
  annotations with "iscrowd": 1 (regions the training ignores) and a "score";
- {"status": "reviewed"}: a person edited the image's annotations; relabel keeps them as they
  are, and iscrowd 0 boxes are trained on as ground truth.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.tasks.detection_folder import ANNOTATIONS_FILE, IMAGES_DIR, DatasetError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
REVIEWED = "reviewed"


class NoCaptures(DatasetError):
    """A capture folder that holds no image yet (a collector's new folder, for one)."""


@dataclass
class CaptureSet:
    """A capture folder's document: its images (entries kept whole) and annotations."""

    path: Path
    doc: dict[str, Any]

    @property
    def images(self) -> list[dict[str, Any]]:
        return list(self.doc.get("images", []))

    def file(self, entry: dict[str, Any]) -> Path:
        name = str(entry["file_name"])
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise DatasetError(f"{self.path}: image file name {name!r} leaves the folder")
        return self.path / name

    def annotations_of(self, image_id: int) -> list[dict[str, Any]]:
        return [a for a in self.doc.get("annotations", []) if int(a["image_id"]) == image_id]

    def write(self) -> Path:
        out = self.path / ANNOTATIONS_FILE
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.doc, indent=1) + "\n")
        tmp.replace(out)
        return out


def read_captures(path: Path) -> CaptureSet:
    """The capture folder at path; annotations.json if present, else every image in images/."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"capture folder not found: {path}")
    ann = path / ANNOTATIONS_FILE
    if ann.is_file():
        try:
            doc = json.loads(ann.read_text())
            if not isinstance(doc, dict) or not isinstance(doc.get("images", []), list):
                raise ValueError("not a COCO document")
            for im in doc.get("images", []):
                int(im["id"]), str(im["file_name"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{ann} is not a valid COCO annotations file: {exc!r}") from exc
    else:
        files = sorted(
            p for p in (path / IMAGES_DIR).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES
        )
        doc = {
            "images": [
                {"id": i + 1, "file_name": f"{IMAGES_DIR}/{p.name}"} for i, p in enumerate(files)
            ]
        }
    doc.setdefault("annotations", [])
    captures = CaptureSet(path, doc)
    if not captures.images:
        raise NoCaptures(f"{path} has no captured images (nothing in {IMAGES_DIR}/)")
    return captures


@dataclass
class LabelledImages:
    """Images with boxes to learn and regions to ignore, boxes (ymin, xmin, ymax, xmax) in [0, 1]."""

    images: list[np.ndarray]
    boxes: list[np.ndarray]
    classes: list[np.ndarray]
    ignore: list[np.ndarray]
    labels: list[str]

    def add(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        classes: np.ndarray,
        ignore: np.ndarray | None = None,
    ) -> None:
        self.images.append(image)
        self.boxes.append(boxes)
        self.classes.append(classes)
        self.ignore.append(np.zeros((0, 4), np.float32) if ignore is None else ignore)


def _yxyx(bbox: list[float], h: float, w: float) -> list[float]:
    x, y, bw, bh = (float(v) for v in bbox)
    return [y / h, x / w, (y + bh) / h, (x + bw) / w]


def labelled_images(captures: CaptureSet, size: int, model_labels: list[str]) -> LabelledImages:
    """Every labelled image of the folder resized to size x size, classes mapped to the model's.
    Images never labelled (no "label" entry) are skipped."""
    from agent.geometry.letterbox import resize_image
    from converter.tasks.detection import class_index

    cats = sorted(captures.doc.get("categories", []), key=lambda c: int(c["id"]))
    names = [str(c["name"]) for c in cats]
    index = class_index(names, model_labels) if names else np.zeros(0, np.int32)
    cat_pos = {int(c["id"]): i for i, c in enumerate(cats)}
    out = LabelledImages([], [], [], [], list(model_labels))
    for entry in captures.images:
        if "label" not in entry:
            continue
        image = _read_rgb(captures.file(entry))
        h, w = image.shape[:2]
        keep, crowd, cls = [], [], []
        for a in captures.annotations_of(int(entry["id"])):
            box = _yxyx(a["bbox"], h, w)
            if a.get("iscrowd"):
                crowd.append(box)
            else:
                keep.append(box)
                cls.append(int(index[cat_pos[int(a["category_id"])]]))
        out.add(
            resize_image(image, (size, size))[0],
            np.asarray(keep, np.float32).reshape(-1, 4),
            np.asarray(cls, np.int32),
            np.asarray(crowd, np.float32).reshape(-1, 4),
        )
    return out


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def shuffle_labels(folder: Path, seed: int = 0) -> int:
    """Corrupt a labelled capture folder on purpose (to show the gates stop a bad refresh): each
    image gets another image's boxes, with the classes permuted. Returns the boxes moved."""
    captures = read_captures(folder)
    doc = captures.doc
    ids = [int(e["id"]) for e in captures.images]
    rng = np.random.default_rng(seed)
    moved = dict(zip(ids, np.roll(rng.permutation(ids), 1).tolist(), strict=True))
    cats = [int(c["id"]) for c in doc.get("categories", [])]
    swap = dict(zip(cats, np.roll(cats, 1).tolist(), strict=True))
    for a in doc["annotations"]:
        a["image_id"] = moved[int(a["image_id"])]
        a["category_id"] = swap.get(int(a["category_id"]), a["category_id"])
    captures.write()
    return len(doc["annotations"])
