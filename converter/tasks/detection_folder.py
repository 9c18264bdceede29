"""COCO-style detection folders: images plus annotations.json, boxes read normalized to [0, 1].

The validation data of the detection task and of `edgegap eval`; `edgegap zoo make-dataset`
writes one (converter.zoo.detection_data.write_folder).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.errors import EdgegapError

logger = logging.getLogger(__name__)

ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"


class DatasetError(EdgegapError, ValueError):
    """A dataset folder that is missing or malformed."""


@dataclass(frozen=True)
class DetectionFolder:
    """A COCO-style folder: images plus ground truth, with boxes normalized to [0, 1]."""

    path: Path
    files: list[Path]
    boxes: list[np.ndarray]  # per image (n, 4) ymin, xmin, ymax, xmax in [0, 1]
    classes: list[np.ndarray]  # per image (n,) index into `labels`
    labels: list[str]
    info: dict[str, object]

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int) -> np.ndarray:
        """Image i as RGB uint8."""
        bgr = cv2.imread(str(self.files[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"cannot read image {self.files[i]}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_folder(path: Path) -> DetectionFolder:
    """Read a COCO-style folder; raises DatasetError with a one-line reason."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"data folder not found: {path}")
    ann = path / ANNOTATIONS_FILE
    if not ann.is_file():
        raise DatasetError(
            f"{path} has no {ANNOTATIONS_FILE} (make one with `edgegap zoo make-dataset`)"
        )
    try:
        doc = json.loads(ann.read_text())
        cats = sorted(doc["categories"], key=lambda c: int(c["id"]))
        cat_index = {int(c["id"]): i for i, c in enumerate(cats)}
        images = sorted(doc["images"], key=lambda im: int(im["id"]))
        per_image: dict[int, list[tuple[list[float], int]]] = {int(im["id"]): [] for im in images}
        for a in doc["annotations"]:
            per_image[int(a["image_id"])].append(
                ([float(v) for v in a["bbox"]], cat_index[int(a["category_id"])])
            )
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{ann} is not a valid COCO annotations file: {exc!r}") from exc
    files, boxes, classes = [], [], []
    for im in images:
        f = path / str(im["file_name"])
        if not f.is_file():
            raise DatasetError(f"{ann} names a missing image: {f}")
        h, w = float(im["height"]), float(im["width"])
        anns = per_image[int(im["id"])]
        b = np.array(
            [[y / h, x / w, (y + bh) / h, (x + bw) / w] for (x, y, bw, bh), _ in anns], np.float32
        )
        files.append(f)
        boxes.append(b.reshape(-1, 4))
        classes.append(np.array([c for _, c in anns], np.int32))
    labels = [str(c["name"]) for c in cats]
    return DetectionFolder(path, files, boxes, classes, labels, dict(doc.get("info", {})))
