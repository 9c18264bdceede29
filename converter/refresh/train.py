"""The refresh's fine-tune: new pseudo-labelled images mixed with a replay sample of the
original training data, trained toward their labels and distilled from the teacher
(converter.pruning.distill with the detector's own losses, converter.zoo.finetune)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.refresh.captures import LabelledImages
from converter.tasks.detection_folder import read_folder
from converter.tasks.detector_config import DetectorConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 1e-3
    alpha: float = 0.5  # weight of the label loss; the rest is distillation from the teacher
    replay: float = 1.0  # replay images per new image
    seed: int = 0


def replay_images(
    cfg: DetectorConfig, count: int, folder: Path | None, seed: int
) -> LabelledImages:
    """`count` images of the original training data: a COCO folder, or the generated domain a
    training split the reference detector was trained on."""
    from agent.geometry.letterbox import resize_image
    from converter.tasks.detection import class_index

    out = LabelledImages([], [], [], [], list(cfg.classes))
    if count <= 0:
        return out
    if folder is None:
        from converter.zoo.detection_data import make_sample

        order = np.random.default_rng(seed).permutation(4000)[:count]
        for i in order:
            s = make_sample("train", int(i), 0, cfg.input_size)
            out.add(s.image, s.boxes, s.classes)
    else:
        data = read_folder(folder)
        index = class_index(data.labels, list(cfg.classes))
        size = (cfg.input_size, cfg.input_size)
        for i in np.random.default_rng(seed).permutation(len(data))[:count]:
            out.add(
                resize_image(data.image(int(i)), size)[0], data.boxes[i], index[data.classes[i]]
            )
    return out


def targets(cfg: DetectorConfig, data: LabelledImages) -> list[np.ndarray]:
    """Anchor targets as the detector trains, with anchors on uncertain regions ignored."""
    from agent.geometry.anchors import generate_anchors
    from agent.geometry.boxes import iou_matrix, to_corners
    from converter.zoo.finetune import detection_targets

    box_t, cls_t = detection_targets(cfg, data.boxes, data.classes)
    corners = to_corners(generate_anchors(cfg.anchors))
    for i, regions in enumerate(data.ignore):
        if len(regions):
            near = iou_matrix(corners, regions).max(axis=1) >= 0.4
            cls_t[i, near & (box_t[i, :, 4] == 0), -1] = 0.0
    return [box_t, cls_t]


class CorrectedTeacher:
    """The teacher as relabel ran it: the first `corrected` inputs (the captures) colour- and
    exposure-corrected first; the rest (replay images of the original data) as they are."""

    def __init__(self, model: Any, cfg: DetectorConfig, corrected: int) -> None:
        self.model, self.cfg, self.corrected = model, cfg, corrected

    def predict(self, x: np.ndarray, batch_size: int = 32, verbose: int = 0) -> Any:
        from converter.refresh.relabel import enhance
        from converter.zoo.detector import normalize

        x = x.copy()
        pixels = np.clip(x[: self.corrected] * self.cfg.std + self.cfg.mean, 0, 255)
        if len(pixels):
            fixed = [enhance(p) for p in np.rint(pixels).astype(np.uint8)]
            x[: self.corrected] = normalize(np.stack(fixed), self.cfg)
        return self.model.predict(x, batch_size=batch_size, verbose=verbose)


def fine_tune(
    student: Any,
    teacher: Any,
    cfg: DetectorConfig,
    new: LabelledImages,
    replay: LabelledImages,
    settings: TrainSettings,
) -> Any:
    """Train student in place on new + replay; returns the FineTuneResult."""
    from converter.pruning.distill import detection_distill_loss, distill
    from converter.zoo.detector import normalize
    from converter.zoo.finetune import detection_task_loss

    both = LabelledImages(
        new.images + replay.images, new.boxes + replay.boxes, new.classes + replay.classes,
        new.ignore + replay.ignore, new.labels,
    )  # fmt: skip
    x = normalize(np.stack(both.images), cfg)
    logger.info("fine-tune on %d new and %d replay images", len(new.images), len(replay.images))
    return distill(
        student, teacher, x, targets(cfg, both),
        epochs=settings.epochs, batch_size=settings.batch_size,
        learning_rate=settings.learning_rate, alpha=settings.alpha,
        task_loss=detection_task_loss, distill_loss=detection_distill_loss(),
        label="refresh fine-tune", seed=settings.seed,
    )  # fmt: skip
